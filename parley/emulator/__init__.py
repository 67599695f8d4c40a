"""Gemini Live emulator: the real Live wire protocol over wss, echoing the user's speech.

Public API: `emulator.server` (GeminiEmulator, EmulatorOptions, ConnectionRecord) and
`emulator.cli` (add_arguments, run).
"""
