// The feed map: every feed a dot on a canvas, Web-Mercator projection, wheel zoom and drag.
//
// Up to a million dots: positions are projected once into typed arrays; each frame writes
// pixels straight into an ImageData (no path per dot). A click finds the nearest drawn dot.

const MAX_LATITUDE = 85.05112878;
const EARTH_CIRCUMFERENCE_M = 40075016.686;
const MIN_SCALE = 256; // pixels per world width: the whole world in 256 px
const MAX_SCALE = 256 * 2 ** 22;
const CLICK_RADIUS_PX = 8;

function projectX(lon) {
  return (lon + 180) / 360;
}

function projectY(lat) {
  const clamped = Math.max(-MAX_LATITUDE, Math.min(MAX_LATITUDE, lat));
  const radians = (clamped * Math.PI) / 180;
  return (1 - Math.log(Math.tan(Math.PI / 4 + radians / 2)) / Math.PI) / 2;
}

function unprojectX(x) {
  return x * 360 - 180;
}

function unprojectY(y) {
  return (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;
}

// "#rrggbb" or "rgb(r, g, b)" or "hsl(...)" -> a little-endian RGBA pixel word.
function pixelOf(color, context) {
  context.fillStyle = color;
  const normal = context.fillStyle; // the browser normalizes to #rrggbb
  const value = parseInt(normal.slice(1), 16);
  const red = (value >> 16) & 255;
  const green = (value >> 8) & 255;
  const blue = value & 255;
  return ((255 << 24) | (blue << 16) | (green << 8) | red) >>> 0;
}

function niceDegrees(span) {
  const steps = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30];
  return steps.find((step) => span / step <= 8) || 30;
}

export class FeedMap {
  constructor(canvas, { onSelect, onHover, onArea }) {
    this.canvas = canvas;
    this.onArea = onArea;
    this.areaMode = false;
    this.area = null; // {kind: "bbox", x0, y0, x1, y1} or {kind: "near", x, y, metres} (world units)
    // every frame reads the pixels back to draw the dots into them
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.onSelect = onSelect;
    this.onHover = onHover;
    this.count = 0;
    this.x = new Float64Array(0);
    this.y = new Float64Array(0);
    this.category = new Uint16Array(0);
    this.colors = [];
    this.hidden = new Set();
    this.selected = -1;
    this.centerX = 0.5;
    this.centerY = 0.5;
    this.scale = MIN_SCALE;
    this.frame = 0;
    this.drag = null;
    this.listen();
    new ResizeObserver(() => this.redraw()).observe(canvas);
  }

  // ------------------------------------------------------------------ data

  setPoints(points) {
    const count = points.count;
    this.count = count;
    this.ids = points.ids;
    this.x = new Float64Array(count);
    this.y = new Float64Array(count);
    for (let i = 0; i < count; i += 1) {
      this.x[i] = projectX(points.lon[i]);
      this.y[i] = projectY(points.lat[i]);
    }
    this.selected = -1;
  }

  // category: one small integer per point; colors: a CSS colour per category
  setCategories(category, colors) {
    this.category = Uint16Array.from(category);
    this.colors = colors;
    this.pixels = Uint32Array.from(colors.map((color) => pixelOf(color, this.context)));
    this.redraw();
  }

  setHidden(hidden) {
    this.hidden = new Set(hidden);
    this.redraw();
  }

  // ------------------------------------------------------------------ area

  setAreaMode(on) {
    this.areaMode = on;
    this.canvas.classList.toggle("area-mode", on);
  }

  clearArea() {
    this.area = null;
    this.redraw();
  }

  // The area in degrees: {bbox: [west, south, east, north]} or {near: [lon, lat, metres]}.
  areaInDegrees() {
    const area = this.area;
    if (!area) return null;
    if (area.kind === "near") {
      return { near: [unprojectX(area.x), unprojectY(area.y), area.metres] };
    }
    const west = unprojectX(Math.min(area.x0, area.x1));
    const east = unprojectX(Math.max(area.x0, area.x1));
    const north = unprojectY(Math.min(area.y0, area.y1));
    const south = unprojectY(Math.max(area.y0, area.y1));
    return { bbox: [west, south, east, north] };
  }

  metresPerPixel(worldY) {
    const latitude = unprojectY(worldY);
    return (EARTH_CIRCUMFERENCE_M * Math.cos((latitude * Math.PI) / 180)) / this.scale;
  }

  // ------------------------------------------------------------------ view

  fit() {
    if (!this.count) {
      this.centerX = 0.5;
      this.centerY = 0.5;
      this.scale = MIN_SCALE;
      this.redraw();
      return;
    }
    let minX = Infinity;
    let maxX = -Infinity;
    let minY = Infinity;
    let maxY = -Infinity;
    for (let i = 0; i < this.count; i += 1) {
      if (this.x[i] < minX) minX = this.x[i];
      if (this.x[i] > maxX) maxX = this.x[i];
      if (this.y[i] < minY) minY = this.y[i];
      if (this.y[i] > maxY) maxY = this.y[i];
    }
    const { width, height } = this.size();
    const spanX = Math.max(maxX - minX, 1e-7);
    const spanY = Math.max(maxY - minY, 1e-7);
    this.centerX = (minX + maxX) / 2;
    this.centerY = (minY + maxY) / 2;
    this.scale = this.clampScale(0.9 * Math.min(width / spanX, height / spanY));
    this.redraw();
  }

  zoomBy(factor, anchorX, anchorY) {
    const { width, height } = this.size();
    const px = anchorX ?? width / 2;
    const py = anchorY ?? height / 2;
    const worldX = this.centerX + (px - width / 2) / this.scale;
    const worldY = this.centerY + (py - height / 2) / this.scale;
    this.scale = this.clampScale(this.scale * factor);
    this.centerX = worldX - (px - width / 2) / this.scale;
    this.centerY = worldY - (py - height / 2) / this.scale;
    this.redraw();
  }

  panBy(dx, dy) {
    this.centerX -= dx / this.scale;
    this.centerY = Math.max(0, Math.min(1, this.centerY - dy / this.scale));
    this.redraw();
  }

  clampScale(scale) {
    return Math.max(MIN_SCALE, Math.min(MAX_SCALE, scale));
  }

  size() {
    return { width: this.canvas.clientWidth || 1, height: this.canvas.clientHeight || 1 };
  }

  // The visible area as minLon,minLat,maxLon,maxLat (clamped to the world).
  bbox() {
    const { width, height } = this.size();
    const west = unprojectX(this.centerX - width / 2 / this.scale);
    const east = unprojectX(this.centerX + width / 2 / this.scale);
    const north = unprojectY(Math.max(0, this.centerY - height / 2 / this.scale));
    const south = unprojectY(Math.min(1, this.centerY + height / 2 / this.scale));
    const clamp = (value, limit) => Math.max(-limit, Math.min(limit, value));
    return [clamp(west, 180), clamp(south, 90), clamp(east, 180), clamp(north, 90)];
  }

  lonLatAt(px, py) {
    const { width, height } = this.size();
    return [
      unprojectX(this.centerX + (px - width / 2) / this.scale),
      unprojectY(this.centerY + (py - height / 2) / this.scale),
    ];
  }

  // ------------------------------------------------------------------ drawing

  redraw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.size();
    const pixelWidth = Math.max(1, Math.round(width * ratio));
    const pixelHeight = Math.max(1, Math.round(height * ratio));
    if (this.canvas.width !== pixelWidth || this.canvas.height !== pixelHeight) {
      this.canvas.width = pixelWidth;
      this.canvas.height = pixelHeight;
    }
    const context = this.context;
    const style = getComputedStyle(this.canvas);
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = style.getPropertyValue("--map-background").trim() || "#f4f6f8";
    context.fillRect(0, 0, pixelWidth, pixelHeight);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.drawGraticule(context, width, height, style);
    this.drawPoints(context, pixelWidth, pixelHeight, ratio);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.drawSelection(context, width, height, style);
    this.drawArea(context, width, height, style);
    this.drawScaleBar(context, height, style);
  }

  drawArea(context, width, height, style) {
    const area = this.area;
    if (!area) return;
    const toScreen = (x, y) => [
      (x - this.centerX) * this.scale + width / 2,
      (y - this.centerY) * this.scale + height / 2,
    ];
    context.strokeStyle = style.getPropertyValue("--accent").trim() || "#1f5f9e";
    context.fillStyle = style.getPropertyValue("--area-fill").trim() || "rgba(31, 95, 158, 0.12)";
    context.lineWidth = 2;
    context.beginPath();
    if (area.kind === "near") {
      const [px, py] = toScreen(area.x, area.y);
      const radius = area.metres / this.metresPerPixel(area.y);
      context.arc(px, py, Math.max(3, radius), 0, 2 * Math.PI);
    } else {
      const [x0, y0] = toScreen(area.x0, area.y0);
      const [x1, y1] = toScreen(area.x1, area.y1);
      context.rect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    }
    context.fill();
    context.stroke();
  }

  drawGraticule(context, width, height, style) {
    const [west, south, east, north] = this.bbox();
    const step = niceDegrees(Math.max(east - west, north - south));
    const decimals = Math.max(0, -Math.floor(Math.log10(step)));
    context.strokeStyle = style.getPropertyValue("--map-grid").trim() || "#d5dbe1";
    context.fillStyle = style.getPropertyValue("--map-label").trim() || "#66707a";
    context.lineWidth = 1;
    context.font = "11px system-ui, sans-serif";
    context.beginPath();
    for (let lon = Math.ceil(west / step) * step; lon <= east; lon += step) {
      const px = (projectX(lon) - this.centerX) * this.scale + width / 2;
      context.moveTo(px, 0);
      context.lineTo(px, height);
      context.fillText(`${lon.toFixed(decimals)}°`, px + 3, height - 4);
    }
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      const py = (projectY(lat) - this.centerY) * this.scale + height / 2;
      context.moveTo(0, py);
      context.lineTo(width, py);
      context.fillText(`${lat.toFixed(decimals)}°`, 3, py - 3);
    }
    context.stroke();
  }

  drawPoints(context, pixelWidth, pixelHeight, ratio) {
    if (!this.count || !this.pixels) {
      this.canvas.dataset.drawn = "0";
      return;
    }
    const image = context.getImageData(0, 0, pixelWidth, pixelHeight);
    const words = new Uint32Array(image.data.buffer);
    // Bigger dots when zoomed in or when there are few of them.
    const zoomed = this.scale > 256 * 2 ** 15 || this.count < 5000;
    const radius = Math.max(1, Math.round((zoomed ? 2.5 : 1.5) * ratio));
    const scale = this.scale * ratio;
    const offsetX = pixelWidth / 2 - this.centerX * scale;
    const offsetY = pixelHeight / 2 - this.centerY * scale;
    const hidden = this.hidden;
    const hiding = hidden.size > 0;
    const { x, y, category, pixels } = this;
    let drawn = 0;
    for (let i = 0; i < this.count; i += 1) {
      const px = Math.round(x[i] * scale + offsetX);
      const py = Math.round(y[i] * scale + offsetY);
      if (px < -radius || py < -radius || px >= pixelWidth + radius || py >= pixelHeight + radius) {
        continue;
      }
      const code = category[i];
      if (hiding && hidden.has(code)) continue;
      const word = pixels[code];
      drawn += 1;
      const top = Math.max(0, py - radius + 1);
      const bottom = Math.min(pixelHeight - 1, py + radius - 1);
      const left = Math.max(0, px - radius + 1);
      const right = Math.min(pixelWidth - 1, px + radius - 1);
      for (let row = top; row <= bottom; row += 1) {
        const base = row * pixelWidth;
        for (let column = left; column <= right; column += 1) words[base + column] = word;
      }
    }
    context.putImageData(image, 0, 0);
    // How many dots this frame drew: for people reading the DOM (and the browser test).
    this.canvas.dataset.drawn = String(drawn);
  }

  screenOf(i) {
    const { width, height } = this.size();
    return [
      (this.x[i] - this.centerX) * this.scale + width / 2,
      (this.y[i] - this.centerY) * this.scale + height / 2,
    ];
  }

  drawSelection(context, width, height, style) {
    if (this.selected < 0) return;
    const [px, py] = this.screenOf(this.selected);
    if (px < -20 || py < -20 || px > width + 20 || py > height + 20) return;
    context.strokeStyle = style.getPropertyValue("--map-selection").trim() || "#000";
    context.lineWidth = 2;
    context.beginPath();
    context.arc(px, py, 8, 0, 2 * Math.PI);
    context.stroke();
  }

  drawScaleBar(context, height, style) {
    const [, latitude] = this.lonLatAt(0, height / 2);
    const metresPerPixel =
      (EARTH_CIRCUMFERENCE_M * Math.cos((latitude * Math.PI) / 180)) / this.scale;
    const target = metresPerPixel * 100;
    const power = 10 ** Math.floor(Math.log10(target));
    const metres = [1, 2, 5, 10].map((f) => f * power).filter((m) => m <= target).pop() || power;
    const length = metres / metresPerPixel;
    const label = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
    context.strokeStyle = style.getPropertyValue("--map-label").trim() || "#333";
    context.fillStyle = context.strokeStyle;
    context.lineWidth = 2;
    context.beginPath();
    context.moveTo(50, height - 22);
    context.lineTo(50 + length, height - 22);
    context.stroke();
    context.fillText(label, 50, height - 27);
  }

  // ------------------------------------------------------------------ picking

  // Index of the nearest shown point within the click radius, or -1.
  pick(px, py) {
    const { width, height } = this.size();
    const worldX = this.centerX + (px - width / 2) / this.scale;
    const worldY = this.centerY + (py - height / 2) / this.scale;
    const reach = CLICK_RADIUS_PX / this.scale;
    let best = -1;
    let bestDistance = reach * reach;
    for (let i = 0; i < this.count; i += 1) {
      const dx = this.x[i] - worldX;
      if (dx > reach || dx < -reach) continue;
      const dy = this.y[i] - worldY;
      if (dy > reach || dy < -reach) continue;
      if (this.hidden.size && this.hidden.has(this.category[i])) continue;
      const distance = dx * dx + dy * dy;
      if (distance <= bestDistance) {
        best = i;
        bestDistance = distance;
      }
    }
    return best;
  }

  // ------------------------------------------------------------------ input

  listen() {
    const canvas = this.canvas;
    const local = (event) => {
      const box = canvas.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [px, py] = local(event);
      const pixels = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
      this.zoomBy(Math.exp(-pixels * 0.0015), px, py);
    }, { passive: false });
    const world = (px, py) => {
      const { width, height } = this.size();
      return [this.centerX + (px - width / 2) / this.scale, this.centerY + (py - height / 2) / this.scale];
    };
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      const [px, py] = local(event);
      this.drag = { startX: px, startY: py, lastX: px, lastY: py, moved: false, area: this.areaMode };
    });
    canvas.addEventListener("pointermove", (event) => {
      const [px, py] = local(event);
      if (this.onHover) this.onHover(this.lonLatAt(px, py));
      if (!this.drag) return;
      const { lastX, lastY, startX, startY } = this.drag;
      if (Math.hypot(px - startX, py - startY) > 4) this.drag.moved = true;
      if (this.drag.moved && this.drag.area) {
        const [x0, y0] = world(startX, startY);
        const [x1, y1] = world(px, py);
        this.area = { kind: "bbox", x0, y0, x1, y1 };
        this.redraw();
      } else if (this.drag.moved) {
        this.panBy(px - lastX, py - lastY);
      }
      this.drag.lastX = px;
      this.drag.lastY = py;
    });
    canvas.addEventListener("pointerup", (event) => {
      const drag = this.drag;
      this.drag = null;
      if (!drag) return;
      if (drag.area) {
        if (!drag.moved) {
          // A click marks a circle a little wider than a street block at this zoom.
          const [px, py] = local(event);
          const [x, y] = world(px, py);
          const metres = Math.max(50, Math.min(2000, Math.round(this.metresPerPixel(y) * 40 / 50) * 50));
          this.area = { kind: "near", x, y, metres };
          this.redraw();
        }
        if (this.onArea) this.onArea(this.areaInDegrees());
        return;
      }
      if (drag.moved) return;
      const [px, py] = local(event);
      const found = this.pick(px, py);
      this.selected = found;
      this.redraw();
      if (this.onSelect) this.onSelect(found < 0 ? null : this.ids[found]);
    });
    canvas.addEventListener("pointercancel", () => {
      this.drag = null;
    });
    canvas.addEventListener("dblclick", (event) => {
      const [px, py] = local(event);
      this.zoomBy(2, px, py);
    });
    canvas.addEventListener("keydown", (event) => {
      const moves = { ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60] };
      if (moves[event.key]) this.panBy(...moves[event.key]);
      else if (event.key === "+" || event.key === "=") this.zoomBy(1.5);
      else if (event.key === "-") this.zoomBy(1 / 1.5);
      else return;
      event.preventDefault();
    });
  }
}
