// Live captions, drawn the same way by the join page and the widget: one list item per utterance
// ("You: " / "Agent: " and the text as it arrives), closed when the piece is final; an interrupted
// agent's caption ends with a dash; a grounded answer's sources are listed under it.

export class Captions {
  /**
   * @param {HTMLOListElement} list where the captions go (it scrolls itself: max-height, overflow)
   * @param {number} [keep] how many items to keep (older ones go)
   */
  constructor(list, keep = Infinity) {
    this.list = list;
    this.keep = keep;
    this.open = { user: null, agent: null };
  }

  /** Add one `transcript` event's piece {role, text, final}. */
  add({ role, text, final }) {
    let item = this.open[role];
    if (!item) {
      item = document.createElement("li");
      item.className = role;
      const who = document.createElement("span");
      who.className = "who-label";
      who.textContent = role === "user" ? "You: " : "Agent: ";
      item.append(who, document.createTextNode(""));
      this.list.append(item);
      this.open[role] = item;
      while (this.list.children.length > this.keep) this.list.firstElementChild.remove();
    }
    item.childNodes[1].textContent += text; // after the label; sources may follow the text
    if (final) this.open[role] = null;
    this.list.scrollTop = this.list.scrollHeight;
  }

  /** The web sources of a grounded answer {sources: [{title, uri}]}, listed under the agent's caption. */
  sources({ sources }) {
    if (!sources.length) return;
    const agent = [...this.list.querySelectorAll("li.agent")].pop();
    const holder = agent || this.list.appendChild(document.createElement("li"));
    const list = document.createElement("ul");
    list.className = "sources";
    list.setAttribute("aria-label", "Sources");
    for (const { title, uri } of sources) {
      const link = document.createElement("a");
      link.href = uri; // http(s) only: events.js checked
      link.textContent = title;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      const item = document.createElement("li");
      item.append(link);
      list.append(item);
    }
    holder.append(list);
    this.list.scrollTop = this.list.scrollHeight;
  }

  /** The agent was talked over: its open caption ends here. */
  interrupted() {
    if (this.open.agent) this.add({ role: "agent", text: " —", final: true });
  }

  /** The call is over: the next piece starts a new item. */
  close() {
    this.open = { user: null, agent: null };
  }

  clear() {
    this.list.replaceChildren();
    this.close();
  }
}
