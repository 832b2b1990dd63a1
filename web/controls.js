// Style controls, built from the server's JSON schema of the live parameters (GET /api/params).

export const PRESETS = [
  { name: "Watercolor portrait", prompt: "watercolor portrait, soft light, detailed, paper texture", strength: 0.5 },
  { name: "Claymation", prompt: "claymation character, plasticine, stop motion, studio light", strength: 0.6 },
  { name: "Oil painting", prompt: "oil painting portrait, thick brush strokes, impressionism", strength: 0.55 },
  { name: "Anime", prompt: "anime portrait, cel shading, vibrant colors, studio ghibli style", strength: 0.6 },
  { name: "Cyberpunk neon", prompt: "cyberpunk portrait, neon lights, rain, cinematic", strength: 0.55 },
  { name: "Pencil sketch", prompt: "pencil sketch portrait, graphite, cross hatching, white paper", strength: 0.5 },
  { name: "Marble statue", prompt: "white marble statue, classical sculpture, museum lighting", strength: 0.65 },
];

const TEXT_DEBOUNCE_MS = 600;
const SLIDER_DEBOUNCE_MS = 150;
const STEP = { strength: 0.05, guidance_scale: 0.1 };
const LABEL = { negative_prompt: "Negative prompt", guidance_scale: "Guidance", steps: "Steps", strength: "Strength", seed: "Seed", prompt: "Prompt" };

/**
 * Builds one control per parameter into `container`; calls onChange({name: value}) after the
 * user stops changing it. Each control shows "sending…" until markApplied() confirms it.
 */
export class StyleControls {
  constructor(container, schema, onChange) {
    this.onChange = onChange;
    this.fields = new Map();
    this.timers = new Map();
    for (const [name, property] of Object.entries(schema.properties)) {
      const field = this.build(name, property);
      container.append(field.root);
      this.fields.set(name, field);
    }
  }

  build(name, property) {
    const root = document.createElement("div");
    root.className = "param";
    const id = `param-${name}`;
    const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: LABEL[name] || name });
    label.title = property.description || "";
    const line = document.createElement("div");
    line.className = "line";
    const status = document.createElement("span");
    status.className = "status";
    let input;
    let read;
    let show = () => {};
    if (property.type === "string") {
      input = document.createElement("textarea");
      input.rows = name === "prompt" ? 3 : 2;
      input.maxLength = property.maxLength || 1000;
      read = () => input.value;
      input.addEventListener("input", () => this.changed(name, TEXT_DEBOUNCE_MS));
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey) {
          event.preventDefault();
          this.changed(name, 0);
        }
      });
      line.append(input);
    } else if (name === "seed") {
      input = Object.assign(document.createElement("input"), { type: "number", min: property.minimum, max: property.maximum, step: 1 });
      read = () => Number(input.value);
      input.addEventListener("input", () => this.changed(name, TEXT_DEBOUNCE_MS));
      const randomize = Object.assign(document.createElement("button"), { type: "button", textContent: "Randomize" });
      randomize.setAttribute("aria-label", "Randomize seed");
      randomize.addEventListener("click", () => {
        input.value = Math.floor(Math.random() * property.maximum);
        this.changed(name, 0);
      });
      line.append(input, randomize);
    } else {
      input = Object.assign(document.createElement("input"), {
        type: "range",
        min: property.minimum,
        max: property.maximum,
        step: property.type === "integer" ? 1 : STEP[name] || 0.01,
      });
      const output = document.createElement("output");
      output.htmlFor = id;
      show = () => { output.textContent = input.value; };
      read = () => Number(input.value);
      input.addEventListener("input", () => {
        show();
        this.changed(name, SLIDER_DEBOUNCE_MS);
      });
      line.append(input, output);
    }
    input.id = id;
    input.name = name;
    input.value = property.default;
    show();
    root.append(label, line, status);
    return { root, input, read, show };
  }

  changed(name, delay) {
    this.fields.get(name).root.dataset.status = "pending";
    clearTimeout(this.timers.get(name));
    this.timers.set(name, setTimeout(() => this.onChange({ [name]: this.fields.get(name).read() }), delay));
  }

  values() {
    return Object.fromEntries([...this.fields].map(([name, field]) => [name, field.read()]));
  }

  /** Set values (a preset) as if the user had changed them all at once. */
  set(values) {
    for (const [name, value] of Object.entries(values)) {
      const field = this.fields.get(name);
      if (!field) continue;
      field.input.value = value;
      field.show();
      field.root.dataset.status = "pending";
    }
    this.onChange(values);
  }

  /** The server acknowledged `params`: fields that hold those values are applied. */
  markApplied(params) {
    for (const [name, field] of this.fields) {
      if (field.root.dataset.status === "pending" && field.read() === params[name]) field.root.dataset.status = "applied";
    }
  }

  markRefused(names) {
    for (const name of names) {
      const field = this.fields.get(name);
      if (field) field.root.dataset.status = "error";
    }
  }
}
