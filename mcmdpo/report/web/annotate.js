// mcmdpo human evaluation: a blind annotation page. Keys 1 / 2 / 3 = left better / tie / right better,
// arrows = back / next. Judgements live in localStorage (they survive a reload) until exported as JSON.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const $ = (id) => document.getElementById(id);
  const questions = data.questions;
  const storeKey = "mcmdpo-humaneval/" + data.study + "/" + data.annotator;
  const KEYS = { "1": "left", "2": "tie", "3": "right" };

  function load() {
    try {
      const saved = JSON.parse(localStorage.getItem(storeKey) || "null");
      if (saved && typeof saved === "object" && saved.choices) return saved;
    } catch (err) { /* a damaged entry starts over */ }
    return { choices: {}, position: 0 };
  }
  const state = load();
  state.position = Math.min(Math.max(0, state.position | 0), questions.length - 1);
  function save() { localStorage.setItem(storeKey, JSON.stringify(state)); }
  function judged() { return questions.filter((q) => state.choices[q.question]).length; }

  function show() {
    const q = questions[state.position];
    const choice = (state.choices[q.question] || {}).choice;
    const img = $("image");
    if (q.image) { img.src = q.image; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    $("context").textContent = q.context;
    $("left").textContent = q.left;
    $("right").textContent = q.right;
    $("left-box").classList.toggle("picked", choice === "left");
    $("right-box").classList.toggle("picked", choice === "right");
    ["left", "tie", "right"].forEach((c) => $("choose-" + c).classList.toggle("picked", choice === c));
    const done = judged();
    $("who").textContent = "annotator " + data.annotator;
    $("progress").textContent = done + " of " + questions.length + " judged";
    $("progress-bar").style.width = (100 * done / questions.length) + "%";
    $("position").textContent = "question " + (state.position + 1) + " of " + questions.length;
    $("back").disabled = state.position === 0;
    $("next").disabled = state.position === questions.length - 1;
    document.body.dataset.position = String(state.position);
    document.body.dataset.judged = String(done);
  }
  function move(step) {
    state.position = Math.min(Math.max(0, state.position + step), questions.length - 1);
    save();
    show();
  }
  function choose(choice) {
    const q = questions[state.position];
    state.choices[q.question] = { choice: choice, at: new Date().toISOString() };
    if (state.position < questions.length - 1) state.position += 1;
    save();
    show();
    if (judged() === questions.length) $("status").textContent = "All questions judged: press Export and send the file.";
  }
  function exportJudgements() {
    const judgements = questions
      .filter((q) => state.choices[q.question])
      .map((q) => ({ question: q.question, choice: state.choices[q.question].choice, at: state.choices[q.question].at }));
    const doc = {
      format: data.format, study: data.study, run: data.run, annotator: data.annotator,
      exported_at: new Date().toISOString(), complete: judgements.length === questions.length,
      judgements: judgements,
    };
    const blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "humaneval-" + data.run.replace(/[^A-Za-z0-9_.-]/g, "_") + "-" + data.annotator + ".json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    const missing = questions.length - judgements.length;
    $("status").textContent = missing ? "Exported; " + missing + " question(s) are not judged yet." : "Exported all " + judgements.length + " judgements.";
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (KEYS[event.key]) { event.preventDefault(); choose(KEYS[event.key]); }
    else if (event.key === "ArrowLeft") { event.preventDefault(); move(-1); }
    else if (event.key === "ArrowRight") { event.preventDefault(); move(1); }
  });
  ["left", "tie", "right"].forEach((c) => $("choose-" + c).addEventListener("click", () => choose(c)));
  $("back").addEventListener("click", () => move(-1));
  $("next").addEventListener("click", () => move(1));
  $("export").addEventListener("click", exportJudgements);
  show();
})();
