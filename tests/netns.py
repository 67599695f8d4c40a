"""A caller on its own bad network: a network namespace joined to this one by a veth pair, impaired.

    root namespace (the server)  10.203.N.1/30 <--veth--> 10.203.N.2/30  caller's namespace

The link's impairment (loss, delay, jitter and so reordering) is applied to real packets in the kernel's
path, each direction on its own:

- `tc qdisc ... netem` on the sending side's veth, when the kernel has netem;
- otherwise a userspace netem: iptables' NFQUEUE hands each UDP packet crossing the caller's veth to a
  small process in the caller's namespace (`python -m tests.netns impair`, speaking nfnetlink_queue
  over a raw netlink socket, no library), which drops it or gives it back to the kernel after a random
  delay. TCP (signaling) is not impaired by this one.

`PARLEY_TEST_IMPAIR=netem|nfqueue` forces one. `link_unavailable()` says why neither works (not root,
no `ip`, the kernel refuses namespaces or veth, neither netem nor NFQUEUE with iptables).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import itertools
import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

NS_PREFIX = "parley-t"
SUBNET = ipaddress.IPv4Network("10.203.0.0/16")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_counter = itertools.count()


class LinkError(RuntimeError):
    pass


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=15, check=False)
    if check and result.returncode != 0:
        raise LinkError(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def iptables() -> str | None:
    # NFQUEUE is needed; the nft backend turns it into nft's `queue`, which some kernels lack.
    return shutil.which("iptables-legacy") or shutil.which("iptables")


@cache
def link_unavailable() -> str | None:
    """None when an impaired namespace link can be made here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (`ip`, `tc`) is not installed"
    try:
        with Link() as link:
            link.impair("up", loss=0.01)
            link.impair("up")
    except LinkError as exc:
        return f"the kernel refused an impaired namespace link: {exc}"
    return None


@cache
def has_netem() -> bool:
    forced = os.environ.get("PARLEY_TEST_IMPAIR")
    if forced:
        return forced == "netem"
    ns = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        netem = ["tc", "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms"]
        return run("ip", "netns", "exec", ns, *netem, check=False).returncode == 0
    except LinkError:
        return False
    finally:
        run("ip", "netns", "del", ns, check=False)


def remove_stale() -> None:
    """Namespaces left by a test process that was killed before it could clean up."""
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NS_PREFIX):
            continue
        pid = name[len(NS_PREFIX) :].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            run("ip", "netns", "del", name, check=False)


def free_subnet() -> ipaddress.IPv4Network:
    used = run("ip", "-o", "-4", "addr", "show", check=False).stdout
    start = (os.getpid() * 7) % 16384
    for i in range(16384):
        net = ipaddress.IPv4Network((int(SUBNET.network_address) + 4 * ((start + i) % 16384), 30))
        if f" {net[1]}/" not in used and f" {net[2]}/" not in used:
            return net
    raise LinkError("no free /30 left in 10.203.0.0/16")


@dataclass
class Impairment:
    loss: float = 0.0  # fraction of packets dropped
    delay_ms: float = 0.0  # mean one-way delay added
    jitter_ms: float = 0.0  # each packet's delay is uniform in delay +- jitter (so packets reorder)

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            args.append(f"{self.jitter_ms:g}ms")
        return [*args, "loss", f"{self.loss * 100:g}%"]


@dataclass
class Link:
    """A namespace for the caller and the veth pair to it. Use as a context manager: always removed."""

    ns: str = ""
    host_address: str = ""  # the root (server) side
    peer_address: str = ""  # the caller's side, in `ns`
    host_dev: str = ""
    peer_dev: str = ""
    backend: str = ""  # "netem" or "nfqueue", once impaired
    impairments: dict[str, Impairment] = field(default_factory=dict)
    _impairer: subprocess.Popen[str] | None = None

    def __enter__(self) -> Link:
        remove_stale()
        n = next(_counter)
        self.ns = f"{NS_PREFIX}{os.getpid()}-{n}"
        tag = f"{os.getpid() % 100000}{chr(97 + n % 26)}"
        self.host_dev, self.peer_dev = f"pvh{tag}", f"pvc{tag}"
        try:
            net = free_subnet()
            self.host_address, self.peer_address = str(net[1]), str(net[2])
            run("ip", "netns", "add", self.ns)
            pair = ["type", "veth", "peer", "name", self.peer_dev, "netns", self.ns]
            run("ip", "link", "add", self.host_dev, *pair)
            run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_dev)
            run("ip", "link", "set", self.host_dev, "up")
            run("ip", "-n", self.ns, "addr", "add", f"{self.peer_address}/30", "dev", self.peer_dev)
            run("ip", "-n", self.ns, "link", "set", self.peer_dev, "up")
            run("ip", "-n", self.ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._impairer is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self._impairer.stdin.close()  # type: ignore[union-attr]
                self._impairer.wait(2)
            if self._impairer.poll() is None:
                self._impairer.kill()
                self._impairer.wait()
            self._impairer = None
        if self.ns:
            run("ip", "netns", "del", self.ns, check=False)  # takes its end of the veth pair, so both
            self.ns = ""
        if self.host_dev:
            run("ip", "link", "del", self.host_dev, check=False)
            self.host_dev = ""

    def exec_args(self, *command: str) -> list[str]:
        """`command` run inside the caller's namespace."""
        return ["ip", "netns", "exec", self.ns, *command]

    # --- impairment -------------------------------------------------------------------------

    def impair(
        self, direction: str, loss: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0
    ) -> None:
        """Impair "up" (caller -> server, the caller's egress) or "down" (server -> caller)."""
        if direction not in ("up", "down"):
            raise ValueError(direction)
        impairment = Impairment(loss, delay_ms, jitter_ms)
        self.impairments[direction] = impairment
        if not self.backend:
            self.backend = "netem" if has_netem() else "nfqueue"
        if self.backend == "netem":
            ns = ["ip", "netns", "exec", self.ns] if direction == "up" else []
            dev = self.peer_dev if direction == "up" else self.host_dev
            run(*ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem", *impairment.netem_args())
        else:
            self._start_impairer()
            assert self._impairer is not None and self._impairer.stdin is not None
            self._impairer.stdin.write(json.dumps({direction: asdict(impairment)}) + "\n")
            self._impairer.stdin.flush()

    def blackhole(self) -> None:
        """Every packet lost, both ways (a tunnel, a dead Wi-Fi): the interfaces stay up."""
        self.impair("up", loss=1.0)
        self.impair("down", loss=1.0)

    def heal(self) -> None:
        self.impair("up")
        self.impair("down")

    def stats(self) -> dict[str, Any]:
        """Packets seen/dropped per direction (nfqueue) or the qdiscs' counters (netem)."""
        if self.backend == "nfqueue" and self._impairer is not None and self._impairer.stdin is not None:
            self._impairer.stdin.write('{"report": true}\n')
            self._impairer.stdin.flush()
            assert self._impairer.stdout is not None
            line = self._impairer.stdout.readline()
            report: dict[str, Any] = json.loads(line)
            return report
        if self.backend == "netem":
            up = run("ip", "netns", "exec", self.ns, "tc", "-s", "qdisc", "show", "dev", self.peer_dev).stdout
            down = run("tc", "-s", "qdisc", "show", "dev", self.host_dev, check=False).stdout
            return {"up": parse_tc_stats(up), "down": parse_tc_stats(down)}
        return {}

    def _start_impairer(self) -> None:
        if self._impairer is not None:
            return
        tables = iptables()
        if tables is None:
            raise LinkError("no netem in this kernel and no iptables for the userspace impairer")
        queue = 203
        self._impairer = subprocess.Popen(
            self.exec_args(sys.executable, "-m", "tests.netns", "impair", "--queue", str(queue)),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._impairer.stdout is not None
        ready = self._impairer.stdout.readline().strip()
        if ready != "ready":
            self._impairer.kill()
            self._impairer = None
            raise LinkError(f"the userspace impairer did not start: {ready!r}")
        for chain, flag, dev in (("OUTPUT", "-o", self.peer_dev), ("INPUT", "-i", self.peer_dev)):
            run(
                *self.exec_args(
                    tables, "-A", chain, flag, dev, "-p", "udp", "-j", "NFQUEUE", "--queue-num", str(queue)
                )
            )


def parse_tc_stats(text: str) -> dict[str, int]:
    words = text.replace(",", " ").replace("(", " ").replace(")", " ").split()
    out: dict[str, int] = {}
    for key, label in (("packets", "pkt"), ("dropped", "dropped")):
        with contextlib.suppress(ValueError, IndexError):
            out[key] = int(words[words.index(label) - 1 if label == "pkt" else words.index(label) + 1])
    return out


# --- the userspace impairer (runs inside the caller's namespace) ---------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_DROP, NF_ACCEPT = 0, 1
NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT = 1, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _message(kind: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def _packets(data: bytes) -> list[tuple[int, int]]:
    """(packet id, netfilter hook) of each queued packet in a netlink datagram."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + 16)
            if error:
                raise OSError(-error, os.strerror(-error))
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos, end = offset + 20, offset + length
            while pos + 4 <= end:
                attr_len, attr_kind = struct.unpack_from("=HH", data, pos)
                if attr_len < 4:
                    break
                if attr_kind & 0x3FFF == NFQA_PACKET_HDR:
                    packet_id, _proto, hook = struct.unpack_from("!IHB", data, pos + 4)
                    out.append((packet_id, hook))
                pos += (attr_len + 3) & ~3
        offset += (length + 3) & ~3
    return out


def impair(queue: int, seed: int) -> None:
    """Hold or drop each packet the kernel queues, as told on stdin (one JSON object a line)."""
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    bind = struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)
    copy_meta = struct.pack("!IB", 0, NFQNL_COPY_META)  # ids and hooks only, not the payloads
    for config in (_attr(NFQA_CFG_CMD, bind), _attr(NFQA_CFG_PARAMS, copy_meta)):
        sock.send(_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, queue, config))
        _packets(sock.recv(65536))  # the ack, or OSError
    print("ready", flush=True)

    settings = {"up": Impairment(), "down": Impairment()}
    counts = {d: {"packets": 0, "dropped": 0, "reordered": 0} for d in settings}
    last_released = {"up": -1, "down": -1}
    held: list[tuple[float, int, int, str]] = []  # (release at, packet id, order, direction)
    order = itertools.count()

    def verdict(packet_id: int, accept: bool) -> None:
        hdr = struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id)
        with contextlib.suppress(OSError):
            sock.send(_message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, queue, _attr(NFQA_VERDICT_HDR, hdr)))

    stdin = sys.stdin.fileno()
    pending = b""
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        ready, _, _ = select.select([sock, stdin], [], [], timeout)
        if stdin in ready:
            chunk = os.read(stdin, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                command = json.loads(line)
                if command.get("report"):
                    print(json.dumps(counts), flush=True)
                for direction in ("up", "down"):
                    if direction in command:
                        settings[direction] = Impairment(**command[direction])
        if sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:  # ENOBUFS: the kernel dropped some (as a congested link would)
                continue
            now = time.monotonic()
            for packet_id, hook in _packets(data):
                direction = "up" if hook == NF_INET_LOCAL_OUT else "down"
                rule = settings[direction]
                counts[direction]["packets"] += 1
                if rule.loss and rng.random() < rule.loss:
                    counts[direction]["dropped"] += 1
                    verdict(packet_id, False)
                    continue
                delay = max(0.0, rule.delay_ms + rng.uniform(-rule.jitter_ms, rule.jitter_ms)) / 1000
                heapq.heappush(held, (now + delay, packet_id, next(order), direction))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, packet_id, n, direction = heapq.heappop(held)
            if n < last_released[direction]:
                counts[direction]["reordered"] += 1
            last_released[direction] = max(last_released[direction], n)
            verdict(packet_id, True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns")
    commands = parser.add_subparsers(dest="command", required=True)
    impairer = commands.add_parser("impair", help="the userspace netem (run inside the namespace)")
    impairer.add_argument("--queue", type=int, default=203)
    impairer.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.command == "impair":
        impair(args.queue, args.seed)


if __name__ == "__main__":
    main()
