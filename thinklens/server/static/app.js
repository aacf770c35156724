// thinklens serve: the little JavaScript the pages need (no build step, no CDN).
"use strict";
const thinklens = (() => {
  const visible = (text) => text.replace(/\n/g, "⏎\n");

  async function postJSON(url, body) {
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body)});
    const data = await response.json().catch(() => ({error: {message: response.statusText}}));
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }

  // Server-sent events from a POST: calls onEvent with each `data:` JSON until [DONE].
  async function streamSSE(url, body, onEvent) {
    const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body)});
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return;
        onEvent(JSON.parse(payload));
      }
    }
  }

  function minimap(canvas) {
    if (!canvas) return;
    fetch(`/api/runs/${canvas.dataset.run}/map`).then((r) => r.json()).then((points) => {
      const context = canvas.getContext("2d");
      const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const at = (p) => [8 + (p.x - x0) / (x1 - x0 || 1) * (canvas.width - 16),
                         canvas.height - 8 - (p.y - y0) / (y1 - y0 || 1) * (canvas.height - 16)];
      context.fillStyle = "#c9ced6";
      for (const p of points) { const [x, y] = at(p); context.fillRect(x, y, 1.5, 1.5); }
      const me = points.find((p) => p.feature_id === Number(canvas.dataset.feature));
      if (me) {
        const [x, y] = at(me);
        context.fillStyle = "#c2410c"; context.beginPath(); context.arc(x, y, 5, 0, 2 * Math.PI); context.fill();
        canvas.dataset.drawn = "1";
      }
    });
  }

  function explainPage(run) {
    const form = document.getElementById("explain-form");
    const out = document.getElementById("explain-tokens"), detail = document.getElementById("explain-detail");
    const error = document.getElementById("explain-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = ""; out.textContent = "explaining…"; detail.textContent = "";
      try {
        const data = await postJSON(`/api/runs/${run}/explain`, {text: form.text.value, top: Number(form.top.value)});
        out.textContent = "";
        const peak = Math.max(1e-9, ...data.tokens.map((t) => (t.features[0] || {activation: 0}).activation));
        data.tokens.forEach((token) => {
          const span = document.createElement("span");
          const best = token.features[0];
          span.className = "tok" + (token.massive ? " massive" : "");
          span.textContent = visible(token.token);
          span.style.setProperty("--a", best ? Math.min(best.activation / peak, 1) : 0);
          span.title = best ? `feature ${best.feature_id}: ${best.activation.toFixed(3)}` : "no active feature";
          span.addEventListener("click", () => {
            detail.innerHTML = "";
            const table = document.createElement("table");
            table.className = "grid";
            token.features.forEach((f) => {
              const row = table.insertRow();
              row.insertCell().innerHTML = `<a href="/runs/${run}/features/${f.feature_id}">${f.feature_id}</a>`;
              row.insertCell().textContent = f.activation.toFixed(3);
              row.insertCell().textContent = f.label;
            });
            detail.append(`token ${JSON.stringify(token.token)}`, table);
          });
          out.append(span);
        });
      } catch (failure) { out.textContent = ""; error.textContent = failure.message; }
    });
  }

  function playgroundPage(run, modelId) {
    const form = document.getElementById("steer-form");
    const error = document.getElementById("steer-error");
    document.getElementById("add-edit").addEventListener("click", () => {
      const edits = document.getElementById("edits");
      const copy = edits.firstElementChild.cloneNode(true);
      edits.append(copy);
    });
    const params = new URLSearchParams(location.search);
    if (params.get("feature")) form.feature.value = params.get("feature");
    if (params.get("strength")) form.strength.value = params.get("strength");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const features = [...document.querySelectorAll("#edits .edit")].filter((e) => e.querySelector("[name=feature]").value !== "")
        .map((e) => ({feature: Number(e.querySelector("[name=feature]").value),
                      strength: Number(e.querySelector("[name=strength]").value),
                      mode: e.querySelector("[name=mode]").value}));
      const steering = {features, policy: form.policy.value};
      if (form.contrast && form.contrast.value) steering.contrast = {name: form.contrast.value, strength: Number(form.contrast_strength.value)};
      const body = {prompt: form.prompt.value, steering, max_tokens: Number(form.max_tokens.value),
                    temperature: Number(form.temperature.value), seed: Number(form.seed.value)};
      const name = [modelId, ...features.map((f) => `f${f.feature}${{add: "@", clamp: "=", scale: "*"}[f.mode]}${f.strength}`)].join("+") + `:${steering.policy}`;
      document.getElementById("steer-model").textContent = `the same from any OpenAI client: model="${name}"`;
      const texts = {baseline: "", steered: ""};
      for (const side of ["baseline", "steered"]) {
        document.getElementById(side).textContent = "";
        document.getElementById(`${side}-status`).textContent = "waiting…";
      }
      document.getElementById("steer-run").disabled = true;
      try {
        await streamSSE(`/api/runs/${run}/steer`, body, (event) => {
          if (event.error) { error.textContent = event.error.message; return; }
          const box = document.getElementById(event.side), status = document.getElementById(`${event.side}-status`);
          if (event.delta !== undefined) {
            texts[event.side] += event.delta; box.textContent = texts[event.side]; status.textContent = "generating…";
            box.dataset.streamed = String(Number(box.dataset.streamed || 0) + 1);
          } else if (event.done) {
            const done = event.done;
            if (done.error) { error.textContent = done.error; }
            const text = done.text || texts[event.side];
            box.textContent = "";
            if (done.steered_from_char !== null && done.steered_from_char !== undefined) {
              const mark = document.createElement("mark");
              mark.className = "steer-start"; mark.textContent = "▶ steering from here"; mark.title = `token ${done.steered_from_token}`;
              box.append(text.slice(0, done.steered_from_char), mark, text.slice(done.steered_from_char));
            } else { box.textContent = text; }
            status.textContent = `${done.completion_tokens} tokens, ${done.finish_reason}` +
              (event.side === "steered" && done.steered_from_char === null && !done.error ? " (steering never started)" : "");
            box.dataset.done = "1";
          }
        });
      } catch (failure) { error.textContent = failure.message; }
      document.getElementById("steer-run").disabled = false;
    });
  }

  return {minimap, explainPage, playgroundPage, streamSSE, postJSON};
})();
