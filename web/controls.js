// Style controls, built from the server's JSON schema of the live parameters (GET /api/params).

// A preset sets the look: prompt and strength, and the blend (a second prompt, its mix) it may carry.
export const PRESETS = [
  { name: "Watercolor portrait", prompt: "watercolor portrait, soft light, detailed, paper texture", strength: 0.5 },
  { name: "Claymation", prompt: "claymation character, plasticine, stop motion, studio light", strength: 0.6 },
  { name: "Oil painting", prompt: "oil painting portrait, (thick brush strokes:1.3), impressionism", strength: 0.55 },
  { name: "Anime", prompt: "anime portrait, cel shading, vibrant colors, studio ghibli style", strength: 0.6 },
  { name: "Cyberpunk neon", prompt: "cyberpunk portrait, neon lights, rain, cinematic", strength: 0.55 },
  { name: "Pencil sketch", prompt: "pencil sketch portrait, graphite, cross hatching, white paper", strength: 0.5 },
  { name: "Marble statue", prompt: "white marble statue, classical sculpture, museum lighting", strength: 0.65 },
  {
    name: "Watercolor meets clay",
    prompt: "watercolor portrait, soft light, paper texture",
    strength: 0.55,
    second_prompt: "claymation character, plasticine, studio light",
    mix: 0.4,
    transition_ms: 1500,
  },
];

const TEXT_DEBOUNCE_MS = 600;
const SLIDER_DEBOUNCE_MS = 150;
const STEP = { strength: 0.05, guidance_scale: 0.1, transition_ms: 50, mix: 0.05 };
const LABEL = {
  negative_prompt: "Negative prompt",
  guidance_scale: "Guidance",
  steps: "Steps",
  strength: "Strength",
  seed: "Seed",
  prompt: "Prompt",
  second_prompt: "Second prompt",
  mix: "Mix",
  transition_ms: "Transition (ms)",
};
// The blend is two controls of the page, not schema fields: a second prompt and how much of it to mix
// in. They travel as the live parameters prompt_weight (1 - mix) and prompts [{text, weight: mix}].
const BLENDED = new Set(["prompt_weight", "prompts"]);
const SECOND_PROMPT = { type: "string", maxLength: 1000, default: "", description: "a second prompt, blended in by Mix" };
const MIX = { type: "number", minimum: 0, maximum: 1, default: 0, description: "how much of the second prompt: 0 none, 1 only it" };

/** The live parameters the blend controls stand for. */
function blendParams(secondPrompt, mix) {
  const text = secondPrompt.trim();
  return text && mix > 0 ? { prompt_weight: 1 - mix, prompts: [{ text, weight: mix }] } : { prompt_weight: 1, prompts: [] };
}

/**
 * Builds one control per parameter into `container`; calls onChange({name: value}) after the
 * user stops changing it. Each control shows "sending…" until markApplied() confirms it.
 */
export class StyleControls {
  constructor(container, schema, onChange) {
    this.onChange = onChange;
    this.fields = new Map();
    this.timers = new Map();
    const properties = Object.entries(schema.properties).filter(([name]) => !BLENDED.has(name));
    const at = properties.findIndex(([name]) => name === "prompt") + 1;
    properties.splice(at, 0, ["second_prompt", SECOND_PROMPT], ["mix", MIX]);
    for (const [name, property] of properties) {
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
        step: STEP[name] || (property.type === "integer" ? 1 : 0.01),
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
    this.timers.set(name, setTimeout(() => this.onChange(this.params([name])), delay));
  }

  /** The live parameters for some controls: a blend control sends the whole blend. */
  params(names) {
    const params = {};
    for (const name of names) {
      if (name === "second_prompt" || name === "mix") Object.assign(params, this.blend());
      else params[name] = this.fields.get(name).read();
    }
    return params;
  }

  blend() {
    return blendParams(this.fields.get("second_prompt").read(), this.fields.get("mix").read());
  }

  values() {
    return this.params([...this.fields.keys()]);
  }

  /** Set values (a preset: the blend controls it lacks are cleared) as if the user had changed them all at once. */
  set(values) {
    const all = { second_prompt: "", mix: 0, ...values };
    for (const [name, value] of Object.entries(all)) {
      const field = this.fields.get(name);
      if (!field) continue;
      field.input.value = value;
      field.show();
      field.root.dataset.status = "pending";
    }
    this.onChange(this.params(Object.keys(all).filter((name) => this.fields.has(name))));
  }

  /** The server acknowledged `params`: controls that hold those values are applied. */
  markApplied(params) {
    const blend = this.blend();
    const blendApplied =
      params.prompt_weight === blend.prompt_weight && JSON.stringify(params.prompts) === JSON.stringify(blend.prompts);
    for (const [name, field] of this.fields) {
      const applied = name === "second_prompt" || name === "mix" ? blendApplied : field.read() === params[name];
      if (field.root.dataset.status === "pending" && applied) field.root.dataset.status = "applied";
    }
  }

  /** Controls of refused parameters (a blend parameter refuses both blend controls). */
  markRefused(names) {
    const controls = names.flatMap((name) => (BLENDED.has(name) ? ["second_prompt", "mix"] : [name]));
    for (const name of controls) {
      const field = this.fields.get(name);
      if (field) field.root.dataset.status = "error";
    }
  }
}
