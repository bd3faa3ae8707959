// The case viewer: a film (and a prior, or the overlay side by side) on a canvas that fills the screen's height,
// windowed in the browser like a PACS viewer. Data (dashboard/viewer.py): films[] with 16-bit value codes packed
// in an RGB PNG (or 8-bit grey levels), their presets, and an optional attribution overlay (RGBA PNG).
//
// Mouse: left drag = window/level (right: wider, down: higher level), right or middle drag (or Shift+left, or
// the pan tool) = pan, Ctrl/Cmd + wheel = zoom at the pointer (the plain wheel scrolls the page), double click =
// reset. Keys: D as read, A auto, F full range, H header windows (cycles), I invert, M magnifier, Z reset,
// + / - zoom, B blink the overlay, [ and ] its opacity, X overlay side by side.
// What persists from case to case: the preset's name, invert, magnifier, the overlay's opacity and split. Zoom,
// pan and a dragged window belong to one case.

const AS_READ = 'as read by the model';
const AUTO = 'auto (percentile)';
const FULL = 'full range';
const CODES = 65535;
const GAP = 4;
const LENS_RADIUS = 110;
const LENS_ZOOM = 2.5;
const KEEP_FILMS = 6;
// decoded films, shared by the viewer and the prefetching mount (each mount loads this script as its own module)
const FILMS = window.__cxrFilms || (window.__cxrFilms = new Map());

function filmView(info) {
  const key = `${info.case}:${info.values.length}:${info.values.slice(-64)}`;
  let view = FILMS.get(key);
  if (view) {
    FILMS.delete(key);  // most recent last
  } else {
    view = new FilmView(info);
  }
  FILMS.set(key, view);
  while (FILMS.size > KEEP_FILMS) FILMS.delete(FILMS.keys().next().value);
  return view;
}

const HTML = `
<div class="cxr-viewer" tabindex="-1">
  <canvas class="cxr-canvas"></canvas>
  <div class="cxr-bar">
    <select class="cxr-preset" title="Window (D as read, A auto, F full range, H header windows)"></select>
    <button class="cxr-invert" title="Invert (I)">Invert</button>
    <button class="cxr-tool" title="What a left drag does: window/level or pan">Drag: window</button>
    <button class="cxr-lens" title="Magnifier (M)">Magnifier</button>
    <button class="cxr-reset" title="Reset zoom, pan and window (Z, or double click)">Reset</button>
    <span class="cxr-overlay-tools">
      <button class="cxr-blink" title="Overlay on/off for blinking (B)">Blink</button>
      <label title="Overlay opacity ([ and ])">opacity <input class="cxr-opacity" type="range" min="0.1" max="1"
        step="0.05"></label>
      <button class="cxr-split" title="Overlay side by side instead of blended (X)">Side by side</button>
    </span>
  </div>
  <div class="cxr-corner cxr-wl"></div>
  <div class="cxr-corner cxr-hint"></div>
  <div class="cxr-legend"><div class="cxr-legend-bar"></div>
    <div class="cxr-legend-text"><span>1</span><span>0.5</span><span>0</span></div></div>
</div>`;

const CSS = `
.cxr-viewer { position: relative; width: 100%; background: #000; color: #ddd; overflow: hidden;
  font: 13px/1.3 "Source Sans Pro", sans-serif; border-radius: 4px; outline: none; user-select: none; }
.cxr-canvas { position: absolute; inset: 0; width: 100%; height: 100%; touch-action: none; cursor: crosshair; }
.cxr-bar { position: absolute; left: 6px; top: 6px; right: 6px; display: flex; gap: 6px; flex-wrap: wrap;
  align-items: center; pointer-events: none; }
.cxr-bar > *, .cxr-overlay-tools > * { pointer-events: auto; }
.cxr-bar select, .cxr-bar button { background: rgba(30,30,30,.85); color: #eee; border: 1px solid #555;
  border-radius: 4px; padding: 2px 8px; font: inherit; cursor: pointer; }
.cxr-bar button[aria-pressed="true"] { background: #2d5f8a; border-color: #6aa3d5; }
.cxr-bar label { background: rgba(30,30,30,.85); border: 1px solid #555; border-radius: 4px; padding: 1px 8px;
  display: inline-flex; align-items: center; gap: 4px; }
.cxr-bar input[type=range] { width: 90px; }
.cxr-overlay-tools { display: none; gap: 6px; align-items: center; }
.cxr-viewer.has-overlay .cxr-overlay-tools { display: inline-flex; }
.cxr-corner { position: absolute; pointer-events: none; text-shadow: 0 0 3px #000, 0 0 2px #000;
  white-space: pre; }
.cxr-wl { left: 8px; bottom: 6px; font-size: 14px; color: #fff; }
.cxr-hint { right: 8px; bottom: 6px; color: #bbb; font-size: 12px; text-align: right; }
.cxr-legend { position: absolute; right: 8px; top: 44px; display: none; gap: 4px; pointer-events: none; }
.cxr-viewer.has-overlay .cxr-legend { display: flex; }
.cxr-legend-bar { width: 12px; height: 120px; border: 1px solid #777; }
.cxr-legend-text { height: 120px; display: flex; flex-direction: column; justify-content: space-between;
  font-size: 11px; text-shadow: 0 0 3px #000; }
.cxr-title { position: absolute; top: 40px; pointer-events: none; color: #fff; font-size: 13px;
  text-shadow: 0 0 3px #000, 0 0 2px #000; }
`;

function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

function loadBitmap(src) {
  return fetch(src).then((r) => r.blob())
    .then((blob) => createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' }));
}

function pixelsOf(bitmap) {
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(bitmap, 0, 0);
  return g.getImageData(0, 0, bitmap.width, bitmap.height).data;
}

// One film: its value codes (or its "as read" grey levels) and a canvas holding it at the current window.
class FilmView {
  constructor(info) {
    this.info = info;
    this.ready = Promise.all([loadBitmap(info.values), info.asRead ? loadBitmap(info.asRead) : null])
      .then(([values, asRead]) => {
        const rgba = pixelsOf(values);
        this.width = values.width;
        this.height = values.height;
        this.codes = new Uint16Array(this.width * this.height);
        if (info.bits === 8) {  // grey levels: code = level * 257 spans the same 0..65535 over [0, 1]
          for (let i = 0, j = 0; i < this.codes.length; i += 1, j += 4) this.codes[i] = rgba[j] * 257;
        } else {
          for (let i = 0, j = 0; i < this.codes.length; i += 1, j += 4) this.codes[i] = rgba[j] * 256 + rgba[j + 1];
        }
        if (asRead) {
          const grey = pixelsOf(asRead);
          this.asRead = new Uint8Array(this.codes.length);
          for (let i = 0, j = 0; i < this.asRead.length; i += 1, j += 4) this.asRead[i] = grey[j];
        }
        this.canvas = new OffscreenCanvas(this.width, this.height);
        this.image = this.canvas.getContext('2d').createImageData(this.width, this.height);
        this.shownKey = null;
      });
  }

  preset(label) { return this.info.presets.find((p) => p.label === label); }

  // The window a preset means for this film: null for "as read" where the reader's display is sent as such.
  windowFor(label, custom) {
    if (custom) return custom;
    if (label === AS_READ && this.asRead) return null;
    return this.preset(label) || this.preset(AS_READ);
  }

  // The window a drag starts from.
  startWindow(label, custom) {
    return this.windowFor(label, custom) || this.preset(AUTO) || this.info.presets[this.info.presets.length - 1];
  }

  render(window, invert) {
    const key = JSON.stringify([window, invert]);
    if (key === this.shownKey) return;
    this.shownKey = key;
    const out = this.image.data;
    const flip = invert !== Boolean(this.info.monochrome1 && window);
    let lut;
    if (window) {
      lut = this.lut(window, flip);
    }
    for (let i = 0, j = 0; i < this.codes.length; i += 1, j += 4) {
      let g;
      if (lut) g = lut[this.codes[i]];
      else g = invert ? 255 - this.asRead[i] : this.asRead[i];
      out[j] = g; out[j + 1] = g; out[j + 2] = g; out[j + 3] = 255;
    }
    this.canvas.getContext('2d').putImageData(this.image, 0, 0);
  }

  // PS3.3 C.11.2.1.2, as scoring.imaging.display._window: codes to grey levels.
  lut(window, flip) {
    const { low, high } = this.info;
    const step = (high - low) / CODES;
    const c = window.center;
    const w = window.width;
    const exact = window.function === 'LINEAR_EXACT';
    const from = exact ? c - w / 2 : c - 0.5 - (w - 1) / 2;
    const span = exact ? w : w - 1;
    const lut = new Uint8ClampedArray(CODES + 1);
    for (let code = 0; code <= CODES; code += 1) {
      const x = low + code * step;
      let y;
      if (window.function === 'SIGMOID') y = 1 / (1 + Math.exp((-4 * (x - c)) / w));
      else if (span <= 0) y = x > from ? 1 : 0;
      else y = clamp((x - from) / span, 0, 1);
      lut[code] = Math.round((flip ? 1 - y : y) * 255);
    }
    return lut;
  }
}

class Viewer {
  constructor(parent) {
    const style = document.createElement('style');
    style.textContent = CSS;
    parent.appendChild(style);
    const holder = document.createElement('div');
    holder.innerHTML = HTML;
    this.root = holder.firstElementChild;
    parent.appendChild(this.root);
    this.canvas = this.root.querySelector('.cxr-canvas');
    this.ui = Object.fromEntries(['preset', 'invert', 'tool', 'lens', 'reset', 'blink', 'opacity', 'split', 'wl',
      'hint', 'legend-bar'].map((name) => [name, this.root.querySelector(`.cxr-${name}`)]));
    this.titles = [];
    // kept from case to case
    this.presetLabel = AS_READ;
    this.invert = false;
    this.lens = false;
    this.panTool = false;
    this.opacity = 0.6;
    this.overlayShown = true;
    this.split = false;
    this.case = null;
    this.listening = false;
    this.bind();
  }

  update(data) {
    this.data = data;
    const films = data.films || [];
    const first = films[0];
    if (!first) return;
    if (this.case !== first.case) {  // a new case: its own view and window
      this.case = first.case;
      this.custom = null;
      this.resetView();
    }
    this.views = films.map(filmView);
    this.overlay = null;
    this.root.classList.toggle('has-overlay', Boolean(data.overlay));
    if (data.overlay) {
      const src = data.overlay.png;
      if (!this.overlayBitmap || this.overlayBitmap.src !== src) {
        this.overlayBitmap = { src, ready: loadBitmap(src).then((bitmap) => { this.overlayBitmap.bitmap = bitmap; }) };
      }
      this.overlay = this.overlayBitmap;
      this.overlay.ready.then(() => this.requestDraw());
      this.ui['legend-bar'].style.background = `linear-gradient(to top, ${data.overlay.stops.join(', ')})`;
    }
    this.fillPresets(first);
    this.syncButtons();
    this.fitHeight();
    Promise.all(this.views.map((v) => v.ready)).then(() => this.requestDraw());
  }

  fillPresets(info) {
    const select = this.ui.preset;
    const labels = info.presets.map((p) => p.label);
    if (!labels.includes(this.presetLabel)) this.presetLabel = AS_READ;
    select.replaceChildren(...labels.map((label) => new Option(label, label)));
    if (this.custom) select.appendChild(new Option('custom (dragged)', '__custom'));
    select.value = this.custom ? '__custom' : this.presetLabel;
  }

  syncButtons() {
    this.ui.invert.setAttribute('aria-pressed', String(this.invert));
    this.ui.lens.setAttribute('aria-pressed', String(this.lens));
    this.ui.tool.textContent = this.panTool ? 'Drag: pan' : 'Drag: window';
    this.ui.blink.setAttribute('aria-pressed', String(this.overlayShown));
    this.ui.split.setAttribute('aria-pressed', String(this.split));
    this.ui.opacity.value = String(this.opacity);
  }

  fitHeight() {
    // as tall as the screen allows below the viewer's top (the film must not need scrolling)
    const top = this.root.getBoundingClientRect().top + window.scrollY;
    const height = Math.max(420, window.innerHeight - top - 10);
    if (Math.abs(this.root.clientHeight - height) > 1) this.root.style.height = `${height}px`;
  }

  resetView() {
    this.zoom = 1;
    this.centre = [0.5, 0.5];  // the film point at the pane's centre, as a share of its width and height
  }

  // panes: [{view, overlay, title}]
  panes() {
    const [current, prior] = this.views;
    const withOverlay = this.overlay && this.overlay.bitmap && this.overlayShown;
    if (prior) {
      return [{ view: current, overlay: withOverlay, title: this.data.films[0].title },
        { view: prior, overlay: false, title: this.data.films[1].title }];
    }
    if (this.overlay && this.split) {
      return [{ view: current, overlay: false, title: this.data.films[0].title },
        { view: current, overlay: withOverlay, title: this.data.overlay.title }];
    }
    return [{ view: current, overlay: withOverlay, title: null }];
  }

  paneRects() {
    const w = this.canvas.clientWidth;
    const h = this.canvas.clientHeight;
    const n = this.panes().length;
    const pw = (w - GAP * (n - 1)) / n;
    return Array.from({ length: n }, (_, i) => ({ x: i * (pw + GAP), y: 0, w: pw, h }));
  }

  // where a film is drawn in its pane (CSS px of the canvas)
  filmRect(view, pane) {
    const fit = Math.min(pane.w / view.width, pane.h / view.height) * this.zoom;
    const w = view.width * fit;
    const h = view.height * fit;
    return { x: pane.x + pane.w / 2 - this.centre[0] * w, y: pane.y + pane.h / 2 - this.centre[1] * h, w, h, fit };
  }

  currentWindow(view) {
    return view.windowFor(this.presetLabel, this.custom);
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    if (!this.root.isConnected || !this.views || this.views.some((v) => !v.codes)) return;
    const dpr = window.devicePixelRatio || 1;
    const cw = this.canvas.clientWidth;
    const ch = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(cw * dpr) || this.canvas.height !== Math.round(ch * dpr)) {
      this.canvas.width = Math.round(cw * dpr);
      this.canvas.height = Math.round(ch * dpr);
    }
    const g = this.canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = '#000';
    g.fillRect(0, 0, cw, ch);
    const panes = this.panes();
    const rects = this.paneRects();
    this.titles.forEach((t) => t.remove());
    this.titles = [];
    panes.forEach((pane, i) => {
      const { view } = pane;
      view.render(this.currentWindow(view), this.invert);
      const r = this.filmRect(view, rects[i]);
      g.save();
      g.beginPath();
      g.rect(rects[i].x, rects[i].y, rects[i].w, rects[i].h);
      g.clip();
      g.imageSmoothingEnabled = r.fit < 2;
      g.drawImage(view.canvas, r.x, r.y, r.w, r.h);
      if (pane.overlay) {
        g.globalAlpha = this.split && !this.views[1] ? 1 : this.opacity;
        g.drawImage(this.overlay.bitmap, r.x, r.y, r.w, r.h);
        g.globalAlpha = 1;
      }
      g.restore();
      if (i === 0) {
        const box = this.canvas.getBoundingClientRect();
        const top = Math.max(r.y, rects[i].y);
        const bottom = Math.min(r.y + r.h, rects[i].y + rects[i].h);
        const left = Math.max(r.x, rects[i].x);
        const right = Math.min(r.x + r.w, rects[i].x + rects[i].w);
        this.root.dataset.film = JSON.stringify({ x: box.x + left, y: box.y + top, width: right - left,
          height: bottom - top });
      }
      if (pane.title) this.addTitle(pane.title, rects[i]);
    });
    this.root.dataset.panes = String(panes.length);
    // what was drawn, for tests and the benchmark to wait on
    this.root.dataset.case = String(this.case);
    this.root.dataset.overlay = panes.some((p) => p.overlay) ? 'drawn' : '';
    this.drawLens(g, panes, rects);
    this.showCorners();
  }

  addTitle(text, rect) {
    const t = document.createElement('div');
    t.className = 'cxr-title';
    t.textContent = text;
    t.style.left = `${rect.x + 8}px`;
    this.root.appendChild(t);
    this.titles.push(t);
  }

  drawLens(g, panes, rects) {
    if (!this.lens || !this.pointer) return;
    const [px, py] = this.pointer;
    const i = rects.findIndex((r) => px >= r.x && px < r.x + r.w);
    if (i < 0) return;
    const pane = panes[i];
    const r = this.filmRect(pane.view, rects[i]);
    g.save();
    g.beginPath();
    g.arc(px, py, LENS_RADIUS, 0, 2 * Math.PI);
    g.clip();
    g.fillStyle = '#000';
    g.fillRect(px - LENS_RADIUS, py - LENS_RADIUS, 2 * LENS_RADIUS, 2 * LENS_RADIUS);
    const x = px - (px - r.x) * LENS_ZOOM;
    const y = py - (py - r.y) * LENS_ZOOM;
    g.imageSmoothingEnabled = r.fit * LENS_ZOOM < 2;
    g.drawImage(pane.view.canvas, x, y, r.w * LENS_ZOOM, r.h * LENS_ZOOM);
    if (pane.overlay) {
      g.globalAlpha = this.opacity;
      g.drawImage(this.overlay.bitmap, x, y, r.w * LENS_ZOOM, r.h * LENS_ZOOM);
    }
    g.restore();
    g.strokeStyle = '#9cf';
    g.lineWidth = 1.5;
    g.beginPath();
    g.arc(px, py, LENS_RADIUS, 0, 2 * Math.PI);
    g.stroke();
  }

  showCorners() {
    const view = this.views[0];
    const window = this.currentWindow(view);
    const scale = view.info.unitScale || 1;
    const fmt = (v) => {
      const s = v * scale;
      return Math.abs(s) >= 100 ? s.toFixed(0) : s.toPrecision(3);
    };
    const name = this.custom ? 'custom' : this.presetLabel;
    const wl = window ? `W ${fmt(window.width)}  L ${fmt(window.center)}` : 'W/L as read by the model';
    this.ui.wl.textContent = `${wl}\n${name}${this.invert ? ' · inverted' : ''}`;
    const overlay = this.overlay ? `overlay ${this.overlayShown ? Math.round(this.opacity * 100) + '%' : 'hidden (B)'}` : '';
    const zoom = `zoom ${Math.round(this.zoom * 100)}%`;
    const drag = this.panTool ? 'drag: pan' : 'drag: window · right drag: pan';
    this.ui.hint.textContent = [overlay, `${zoom} · ${drag} · Ctrl+wheel: zoom`].filter(Boolean).join('\n');
  }

  // --- input -------------------------------------------------------------------------------------------------

  bind() {
    const c = this.canvas;
    c.addEventListener('contextmenu', (e) => e.preventDefault());
    c.addEventListener('pointerdown', (e) => this.pointerDown(e));
    c.addEventListener('pointermove', (e) => this.pointerMove(e));
    c.addEventListener('pointerup', (e) => this.pointerUp(e));
    c.addEventListener('pointercancel', (e) => this.pointerUp(e));
    c.addEventListener('pointerleave', () => { this.pointer = null; if (this.lens) this.requestDraw(); });
    c.addEventListener('dblclick', () => this.reset());
    c.addEventListener('wheel', (e) => this.wheel(e), { passive: false });
    this.ui.preset.addEventListener('change', () => {
      if (this.ui.preset.value !== '__custom') this.choosePreset(this.ui.preset.value);
      this.ui.preset.blur();  // the keys go back to the page (a focused select would take them)
    });
    const click = (name, fn) => this.ui[name].addEventListener('click', (e) => { fn(); e.currentTarget.blur(); });
    click('invert', () => this.toggle('invert'));
    click('tool', () => this.toggle('panTool'));
    click('lens', () => this.toggle('lens'));
    click('reset', () => this.reset());
    click('blink', () => this.toggle('overlayShown'));
    click('split', () => this.toggle('split'));
    this.ui.opacity.addEventListener('input', () => this.setOpacity(Number(this.ui.opacity.value)));
    this.ui.opacity.addEventListener('change', () => this.ui.opacity.blur());
    this.onKey = (e) => this.key(e);
    this.onResize = () => { this.fitHeight(); this.requestDraw(); };
    this.resizer = new ResizeObserver(() => this.requestDraw());
    this.resizer.observe(this.root);
  }

  listen() {
    if (this.listening) return;
    this.listening = true;
    document.addEventListener('keydown', this.onKey);
    window.addEventListener('resize', this.onResize);
  }

  unlisten() {
    this.listening = false;
    document.removeEventListener('keydown', this.onKey);
    window.removeEventListener('resize', this.onResize);
  }

  local(e) {
    const r = this.canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  pointerDown(e) {
    const pan = this.panTool || e.button === 1 || e.button === 2 || e.shiftKey;
    if (e.button !== 0 && !pan) return;
    e.preventDefault();
    this.canvas.setPointerCapture(e.pointerId);
    const view = this.views[0];
    this.drag = { pan, start: this.local(e), centre: [...this.centre],
      window: { ...view.startWindow(this.presetLabel, this.custom) } };
    this.canvas.style.cursor = pan ? 'grabbing' : 'ns-resize';
  }

  pointerMove(e) {
    this.pointer = this.local(e);
    if (!this.drag) {
      if (this.lens) this.requestDraw();
      return;
    }
    const [x, y] = this.pointer;
    const dx = x - this.drag.start[0];
    const dy = y - this.drag.start[1];
    const view = this.views[0];
    if (this.drag.pan) {
      const r = this.filmRect(view, this.paneRects()[0]);
      this.centre = [this.drag.centre[0] - dx / r.w, this.drag.centre[1] - dy / r.h];
    } else {
      const range = (view.info.high - view.info.low) || 1;
      const per = range / 500;  // a drag across ~500 px spans the film's whole range
      const w = this.drag.window;
      this.custom = { center: w.center + dy * per, width: Math.max(per, w.width + dx * per),
        function: w.function === 'SIGMOID' ? 'SIGMOID' : 'LINEAR_EXACT' };
      this.fillPresets(view.info);
    }
    this.requestDraw();
  }

  pointerUp(e) {
    if (!this.drag) return;
    if (this.canvas.hasPointerCapture(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    this.drag = null;
    this.canvas.style.cursor = 'crosshair';
  }

  wheel(e) {
    if (!(e.ctrlKey || e.metaKey)) return;  // the page scrolls as usual
    e.preventDefault();
    this.zoomAt(this.local(e), Math.exp(-e.deltaY * 0.0015));
  }

  zoomAt(point, factor) {
    const view = this.views && this.views[0];
    if (!view || !view.codes) return;
    const rects = this.paneRects();
    const i = Math.max(0, rects.findIndex((r) => point[0] >= r.x && point[0] < r.x + r.w));
    const before = this.filmRect(view, rects[i]);
    const fx = (point[0] - before.x) / before.w;
    const fy = (point[1] - before.y) / before.h;
    this.zoom = clamp(this.zoom * factor, 0.5, 16);
    const after = this.filmRect(view, rects[i]);
    // keep the film point under the pointer where it was
    this.centre = [this.centre[0] + fx - (point[0] - after.x) / after.w,
      this.centre[1] + fy - (point[1] - after.y) / after.h];
    this.requestDraw();
  }

  key(e) {
    if (!this.root.isConnected) { this.unlisten(); return; }
    const target = e.composedPath()[0];
    const typing = target && (target.tagName === 'TEXTAREA' || target.isContentEditable
      || (target.tagName === 'INPUT' && !['range', 'checkbox', 'radio', 'button'].includes(target.type))
      || target.tagName === 'SELECT');
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const view = this.views && this.views[0];
    if (!view) return;
    const k = e.key.toLowerCase();
    const presets = { d: AS_READ, a: AUTO, f: FULL };
    const actions = {
      i: () => this.toggle('invert'),
      m: () => this.toggle('lens'),
      z: () => this.reset(),
      b: () => this.toggle('overlayShown'),
      x: () => this.toggle('split'),
      '[': () => this.setOpacity(this.opacity - 0.1),
      ']': () => this.setOpacity(this.opacity + 0.1),
      '+': () => this.zoomAt(this.centreOfPane(), 1.25),
      '=': () => this.zoomAt(this.centreOfPane(), 1.25),
      '-': () => this.zoomAt(this.centreOfPane(), 0.8),
      h: () => this.nextHeaderWindow(view),
    };
    if (presets[k]) this.choosePreset(presets[k]);
    else if (actions[k]) actions[k]();
    else return;
    e.preventDefault();
    e.stopPropagation();
  }

  centreOfPane() {
    const r = this.paneRects()[0];
    return [r.x + r.w / 2, r.y + r.h / 2];
  }

  nextHeaderWindow(view) {
    const header = view.info.presets.map((p) => p.label).filter((l) => ![AS_READ, AUTO, FULL].includes(l));
    if (!header.length) return;
    const at = header.indexOf(this.presetLabel);
    this.choosePreset(header[(at + 1) % header.length]);
  }

  choosePreset(label) {
    this.presetLabel = label;
    this.custom = null;
    this.fillPresets(this.views[0].info);
    this.requestDraw();
  }

  toggle(name) {
    this[name] = !this[name];
    this.syncButtons();
    this.requestDraw();
  }

  setOpacity(value) {
    this.opacity = clamp(Math.round(value * 20) / 20, 0.1, 1);
    this.overlayShown = true;
    this.syncButtons();
    this.requestDraw();
  }

  reset() {
    this.resetView();
    this.custom = null;
    this.fillPresets(this.views[0].info);
    this.requestDraw();
  }
}

export default function (component) {
  const { data, parentElement } = component;
  if (data && data.prefetch) {  // the next case's film, decoded ahead; nothing drawn
    filmView(data.prefetch);
    return undefined;
  }
  if (!parentElement.__cxrViewer) parentElement.__cxrViewer = new Viewer(parentElement);
  const viewer = parentElement.__cxrViewer;
  viewer.listen();
  viewer.update(data || {});
  return () => viewer.unlisten();
}
