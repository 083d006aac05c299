// mcmdpo report: the cases view. Data comes from the page's JSON element; every string from data or
// models goes into the page through textContent (never as markup).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const sets = data.cases || [];
  if (!sets.length) return;
  const $ = (id) => document.getElementById(id);
  const PAGE = 200; // rows drawn at a time: a test set of thousands stays quick to sort and filter
  const state = { set: 0, metric: "", sort: "item", a: 0, b: 1, order: "desc", filter: "", open: new Set(), limit: PAGE };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function option(select, value, text) {
    const o = el("option", text);
    o.value = String(value);
    select.appendChild(o);
  }
  function fill(select, entries) {
    select.replaceChildren();
    entries.forEach(([value, text]) => option(select, value, text));
  }
  function score(item, model) {
    const out = item.outputs[model];
    const value = out && out.scores ? out.scores[state.metric] : undefined;
    return typeof value === "number" ? value : null;
  }
  function sortValue(item) {
    if (state.sort === "item") return null;
    if (state.sort === "diff") {
      const a = score(item, state.a), b = score(item, state.b);
      return a === null || b === null ? null : a - b;
    }
    return score(item, Number(state.sort));
  }
  function fmt(value) {
    return value === null ? "–" : Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(3);
  }
  function haystack(item) {
    const parts = [item.id, item.question, item.reference];
    item.outputs.forEach((o) => { if (o) parts.push(o.text); });
    return parts.join("\n").toLowerCase();
  }

  function setupSet() {
    const set = sets[state.set];
    state.metric = set.metric || set.metrics[0] || "";
    state.a = 0;
    state.b = Math.min(1, set.models.length - 1);
    fill($("cases-metric"), set.metrics.map((m) => [m, m]));
    $("cases-metric").value = state.metric;
    const models = set.models.map((m, i) => [i, m.label]);
    fill($("cases-sort"), [["item", "item order"], ...models, ...(set.models.length > 1 ? [["diff", "difference A − B"]] : [])]);
    fill($("cases-a"), models);
    fill($("cases-b"), models);
    $("cases-a").value = String(state.a);
    $("cases-b").value = String(state.b);
    $("cases-sort").value = state.sort = "item";
    $("cases-notes").textContent = set.notes.join(" ");
    set.items.forEach((item) => { item._text = haystack(item); });
    render();
  }

  function header(set) {
    const row = el("tr");
    ["item", "image", "post", "reference"].forEach((name) => row.appendChild(el("th", name)));
    set.models.forEach((model, i) => {
      const th = el("th", model.label, "model");
      th.title = "sort by this model's " + state.metric + " (click again to flip the order)";
      th.dataset.model = String(i);
      if (state.sort === String(i)) th.classList.add("sorted");
      row.appendChild(th);
    });
    if (state.sort === "diff") row.appendChild(el("th", "A − B", "sorted"));
    const cols = el("colgroup");
    ["id", "image"].forEach((c) => { const col = el("col"); col.className = c; cols.appendChild(col); });
    return [cols, row];
  }

  function outputCell(item, i, best) {
    const td = el("td");
    const out = item.outputs[i];
    if (!out) { td.appendChild(el("span", "no output", "missing")); return td; }
    td.appendChild(el("div", out.text));
    const value = score(item, i);
    td.appendChild(el("span", state.metric + " " + fmt(value), value !== null && value === best ? "score top" : "score"));
    return td;
  }

  function itemRow(set, item) {
    const tr = el("tr");
    tr.dataset.id = item.id;
    const idCell = el("td");
    const link = el("a", item.id);
    link.href = "#";
    link.className = "item-id";
    link.title = "show the raw prediction records";
    link.addEventListener("click", (event) => { event.preventDefault(); toggle(item.id); });
    idCell.appendChild(link);
    tr.appendChild(idCell);
    const imageCell = el("td", null, "image");
    if (item.image) { const img = el("img"); img.src = item.image; img.alt = "image of item " + item.id; img.loading = "lazy"; imageCell.appendChild(img); }
    tr.appendChild(imageCell);
    tr.appendChild(el("td", item.context));
    tr.appendChild(el("td", item.reference));
    const values = set.models.map((_, i) => score(item, i)).filter((v) => v !== null);
    const best = values.length ? Math.max(...values) : null;
    set.models.forEach((_, i) => tr.appendChild(outputCell(item, i, best)));
    if (state.sort === "diff") tr.appendChild(el("td", fmt(sortValue(item)), "diff"));
    return tr;
  }

  function recordsRow(set, item, width) {
    const tr = el("tr", null, "records");
    tr.dataset.recordsFor = item.id;
    const td = el("td");
    td.colSpan = width;
    set.models.forEach((model, i) => {
      const out = item.outputs[i];
      td.appendChild(el("strong", model.label + " — " + model.source));
      const record = out ? inOrder(Object.assign({}, model.common, item.shared, out.record), model.fields) : null;
      const shown = out ? { record: record, scores: out.scores } : "no record for this item";
      td.appendChild(el("pre", JSON.stringify(shown, null, 2)));
    });
    tr.appendChild(td);
    return tr;
  }

  function inOrder(record, fields) {
    const out = {};
    (fields || []).forEach((k) => { if (k in record) out[k] = record[k]; });
    Object.keys(record).forEach((k) => { if (!(k in out)) out[k] = record[k]; });
    return out;
  }

  function toggle(id) {
    if (state.open.has(id)) state.open.delete(id); else state.open.add(id);
    render(true);
  }

  function visibleItems(set) {
    const needle = state.filter.trim().toLowerCase();
    const items = set.items.filter((item) => !needle || item._text.includes(needle));
    if (state.sort === "item") return items;
    const sign = state.order === "asc" ? 1 : -1;
    return items
      .map((item, index) => ({ item, index, value: sortValue(item) }))
      .sort((x, y) => {
        if (x.value === null || y.value === null) return (x.value === null) - (y.value === null) || x.index - y.index;
        return sign * (x.value - y.value) || x.index - y.index;
      })
      .map((entry) => entry.item);
  }

  function render(keepLimit) {
    if (!keepLimit) state.limit = PAGE;
    const set = sets[state.set];
    $("cases-pair").hidden = state.sort !== "diff";
    const [cols, head] = header(set);
    const table = $("cases-table");
    const old = table.querySelector("colgroup");
    if (old) old.remove();
    table.insertBefore(cols, table.tHead);
    table.tHead.replaceChildren(head);
    const body = document.createDocumentFragment();
    const matching = visibleItems(set);
    const items = matching.slice(0, state.limit);
    const width = head.children.length;
    items.forEach((item) => {
      body.appendChild(itemRow(set, item));
      if (state.open.has(item.id)) body.appendChild(recordsRow(set, item, width));
    });
    table.tBodies[0].replaceChildren(body);
    const more = matching.length - items.length;
    const filtered = matching.length < set.items.length ? "; " + matching.length + " match the filter" : "";
    $("cases-count").textContent = "showing " + items.length + " of " + set.items.length + " items" + filtered;
    $("cases-more").hidden = more <= 0;
    $("cases-more").textContent = "show " + Math.min(more, PAGE) + " more (" + more + " left)";
  }

  let timer = null;
  $("cases-filter").addEventListener("input", (event) => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.filter = event.target.value; render(); }, 120);
  });
  $("cases-metric").addEventListener("change", (e) => { state.metric = e.target.value; render(); });
  $("cases-sort").addEventListener("change", (e) => { state.sort = e.target.value; render(); });
  $("cases-a").addEventListener("change", (e) => { state.a = Number(e.target.value); render(); });
  $("cases-b").addEventListener("change", (e) => { state.b = Number(e.target.value); render(); });
  $("cases-order").addEventListener("change", (e) => { state.order = e.target.value; render(); });
  $("cases-table").tHead.addEventListener("click", (event) => {
    const th = event.target.closest("th.model");
    if (!th) return;
    if (state.sort === th.dataset.model) state.order = state.order === "desc" ? "asc" : "desc";
    state.sort = th.dataset.model;
    $("cases-sort").value = state.sort;
    $("cases-order").value = state.order;
    render();
  });
  $("cases-more").addEventListener("click", () => { state.limit += PAGE; render(true); });
  fill($("cases-benchmark"), sets.map((s, i) => [i, s.title]));
  $("cases-benchmark").parentElement.hidden = sets.length < 2;
  $("cases-benchmark").addEventListener("change", (e) => { state.set = Number(e.target.value); state.open.clear(); setupSet(); });
  setupSet();
})();
