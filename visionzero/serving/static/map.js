// Vision Zero risk map: zones coloured by risk level, a zone panel, a route check and a 7-day outlook.
// Plain script, no build step. Every URL is relative to the page, so the page works at `/`, under a
// prefix, and pinned to a stage behind the canary (`<root>stage/<name>/`).
'use strict';

(() => {
  // ColorBrewer YlOrRd, 5 classes: sequential single hue, colour-blind safe, prints in grey.
  const PALETTE = ['#ffffb2', '#fecc5c', '#fd8d3c', '#f03b20', '#bd0026'];
  const UNKNOWN = '#9e9e9e';
  const STAGES = ['production', 'staging'];
  const $ = (id) => document.getElementById(id);
  const root = new URL(location.pathname.replace(/[^/]*$/, '').replace(/stage\/[^/]+\/$/, ''), location.href);
  const pinned = (location.pathname.match(/stage\/([^/]+)\/$/) || [])[1];
  const base = (stage) => (stage === 'routed' ? root : new URL(`stage/${stage}/`, root));
  const api = (stage, path) => new URL(path, base(stage));
  const other = (stage) => (stage === 'staging' ? 'production' : 'staging');

  const state = {
    meta: null, resolution: null, date: null, block: 0, dates: [],
    stage: STAGES.includes(pinned) ? pinned : 'routed', sideBySide: false, pick: null, zone: null,
  };
  const zoneCache = new Map(); // `${stage}|${resolution}|${date}` -> Promise of a FeatureCollection
  const historyCache = new Map();

  // ---- small helpers -----------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === 'class') node.className = value;
      else if (key.startsWith('data-') || key.startsWith('aria-')) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  const fixed = (x, digits) => Number(x).toFixed(digits);
  // Three significant digits and never exponent notation: res-9 numbers are tiny (1e-5) but stay
  // readable as decimals.
  const sig = (x) => (x === 0 ? '0' : x >= 100 ? x.toFixed(0) : x.toFixed(Math.max(0, 2 - Math.floor(Math.log10(Math.abs(x))))));
  const percent = (p) => `${sig(p * 100)} %`;
  const swatch = (index) => el('span', {class: 'swatch', 'aria-hidden': 'true', style: `background:${index === null ? UNKNOWN : PALETTE[index]}`});
  const levelText = (names, index) => el('span', {class: 'level'}, swatch(index), index === null ? 'unknown' : names[index]);
  const blockLabel = (b) => b.map((h) => String(h).padStart(2, '0')).join('–');
  const titleCase = (s) => s.toLowerCase().replace(/\b\w/g, (c) => c.toUpperCase());
  // Leaflet's canvas draws in the next animation frame; a callback asked for after its own runs
  // right after it, when the drawing is done.
  const drawn = () => new Promise((resolve) => requestAnimationFrame(resolve));

  async function getJSON(url, init) {
    const response = await fetch(url, init);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText} (${url.pathname})`);
    return body;
  }
  const post = (url, payload) => getJSON(url, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(payload),
  });

  function status(message, error = false) {
    $('status').textContent = message;
    $('status').classList.toggle('error', error);
    if (error) document.body.dataset.state = 'error';
  }

  function addDays(isoDate, days) {
    const d = new Date(`${isoDate}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }
  const dayFormat = new Intl.DateTimeFormat('en-US', {
    weekday: 'short', month: 'short', day: 'numeric', year: 'numeric', timeZone: 'UTC',
  });
  const dayLabel = (isoDate) => dayFormat.format(new Date(`${isoDate}T00:00:00Z`));

  // New York wall-clock now as `YYYY-MM-DDTHH:MM` (the API reads naive times as New York time).
  function newYorkNow() {
    const parts = Object.fromEntries(new Intl.DateTimeFormat('en-CA', {
      timeZone: 'America/New_York', year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
    }).formatToParts(new Date()).map((p) => [p.type, p.value]));
    return `${parts.year}-${parts.month}-${parts.day}T${parts.hour}:${parts.minute}`;
  }

  // ---- maps ------------------------------------------------------------------------------------
  function makeView(index, stage) {
    const map = L.map(`map-${index}`, {preferCanvas: true, zoomSnap: 0.25, center: [40.70, -73.95], zoom: 10});
    map.attributionControl.setPrefix('Leaflet (BSD-2-Clause) · no tiles: outlines from crash data');
    // Outlines and the route sit above the zones on canvases of their own that must not take the
    // zones' clicks.
    for (const [pane, z] of [['boroughs', 450], ['route', 460]]) {
      Object.assign(map.createPane(pane).style, {zIndex: z, pointerEvents: 'none'});
    }
    const view = {
      index, map, stage, fc: null, layer: null, byZone: new Map(), boroughs: null,
      outlines: L.canvas({pane: 'boroughs'}), route: L.layerGroup().addTo(map),
    };
    map.on('click', (e) => onMapClick(view, e));
    return view;
  }

  // Opaque fills (there are no tiles beneath); res-9 hexagons get a hairline of their own colour,
  // which closes the anti-aliasing seams between neighbours.
  function zoneStyle(feature) {
    const selected = state.zone && state.zone.id === feature.id;
    const fill = PALETTE[feature.properties.risk_index[state.block]];
    const edge = state.resolution === 9 ? fill : '#777';
    return {
      fillColor: fill, fillOpacity: 1, opacity: 1,
      color: selected ? '#000' : edge, weight: selected ? 3 : 0.6,
      smoothFactor: 0, // a res-9 hexagon is ~5 px across the city: simplified, it stops taking clicks
    };
  }

  // Leaflet puts a string tooltip in as HTML: server text goes in as a text node, never markup.
  function tooltipText(layer) {
    const p = layer.feature.properties;
    const names = state.meta ? state.meta.risk_levels : [];
    return el('span', {}, `${names[p.risk_index[state.block]]}: ${sig(p.expected_crashes[state.block])} expected crashes`);
  }

  function zonesFor(stage, resolution, date) {
    const key = `${stage}|${resolution}|${date}`;
    if (!zoneCache.has(key)) {
      const request = getJSON(api(stage, `zones?resolution=${resolution}&date=${date}`));
      request.catch(() => zoneCache.delete(key));
      zoneCache.set(key, request);
      if (zoneCache.size > 6) zoneCache.delete(zoneCache.keys().next().value);
    }
    return zoneCache.get(key);
  }

  // Same zones as drawn: swap the numbers in place and recolour; otherwise build the layer anew
  // (and, the first time, frame the city before drawing it once).
  function drawZones(view, fc, fit = false) {
    view.fc = fc;
    const same = view.layer && view.byZone.size === fc.features.length
      && fc.features.every((f) => view.byZone.has(f.id));
    if (same) {
      for (const f of fc.features) view.byZone.get(f.id).feature = f;
      recolour(view);
    } else {
      if (view.layer) view.layer.remove();
      view.byZone.clear();
      view.layer = L.geoJSON(fc, {style: zoneStyle, onEachFeature: (f, layer) => view.byZone.set(f.id, layer)});
      view.layer.on('click', (e) => { if (!state.pick) showZone(view, e.layer.feature); });
      view.layer.bindTooltip(tooltipText, {sticky: true});
      if (fit) view.map.fitBounds(view.layer.getBounds(), {animate: false});
      view.layer.addTo(view.map);
    }
    $(`caption-${view.index}`).textContent = `${stageName(view.stage)}: model version ${fc.model_version}, `
      + `answered by ${fc.stage}, weather ${fc.weather_source}`;
    if (view.index === 0) window.vzMap.zoneLayer = view.layer;
  }

  function recolour(view) {
    if (!view.layer) return;
    view.layer.eachLayer((layer) => layer.setStyle(zoneStyle(layer.feature)));
    const selected = state.zone && view.byZone.get(state.zone.id);
    if (selected) selected.bringToFront();
  }

  // Outlines are context, not data: without them the map still answers.
  async function drawBoroughs(view) {
    const fc = await getJSON(api(view.stage, 'boroughs')).catch(() => ({type: 'FeatureCollection', features: []}));
    if (view.boroughs) view.boroughs.remove();
    view.boroughs = L.geoJSON(fc, {
      pane: 'boroughs', renderer: view.outlines, interactive: false,
      style: {color: '#1f1f1f', weight: 1.5, fill: false},
      onEachFeature: (f, layer) => layer.bindTooltip(el('span', {}, titleCase(String(f.properties.name))), {
        permanent: true, direction: 'center', className: 'borough-label', pane: 'boroughs',
      }),
    }).addTo(view.map);
  }

  const stageName = (stage) => (stage === 'routed' ? 'As routed' : titleCase(stage));
  const views = () => (state.sideBySide ? [view0, view1] : [view0]);

  // Load what the controls ask for into every shown map, then refresh the text around them.
  async function reload() {
    document.body.dataset.state = 'loading';
    status('Loading zones…');
    try {
      const shown = views();
      const collections = await Promise.all(shown.map((v) => zonesFor(v.stage, state.resolution, state.date)));
      shown.forEach((v, i) => drawZones(v, collections[i]));
      refreshText();
      await drawn();
      status('');
      document.body.dataset.state = 'ready';
    } catch (err) {
      status(`Could not load the zones: ${err.message}`, true);
    }
  }

  // Block change: no request, recolour the drawn layers.
  function setBlock(block) {
    state.block = block;
    for (const button of $('blocks').children) button.setAttribute('aria-pressed', String(Number(button.value) === block));
    views().forEach(recolour);
    refreshText();
  }

  function refreshText() {
    if (!view0.fc) return;
    renderLegend();
    renderTop();
    if (state.zone) {
      const view = state.zone.view === 1 && state.sideBySide ? view1 : view0;
      const layer = view.byZone.get(state.zone.id);
      if (layer) showZone(view, layer.feature, false);
      else clearZone(); // another resolution: the zone is not on the map any more
    }
    const fc = view0.fc;
    $('model-info').textContent = `Model version ${fc.model_version} (${fc.stage}), ${dayLabel(state.date)}, `
      + `${blockLabel(fc.time_blocks[state.block])} h, resolution ${fc.resolution}`;
  }

  function renderLegend() {
    const fc = view0.fc;
    const t = fc.thresholds;
    const ranges = [`below ${sig(t[0])}`, `${sig(t[0])} to ${sig(t[1])}`, `${sig(t[1])} to ${sig(t[2])}`,
      `${sig(t[2])} to ${sig(t[3])}`, `${sig(t[3])} or more`];
    $('legend').replaceChildren(...fc.risk_levels.map((name, i) => el('li', {'data-level': name, 'data-colour': PALETTE[i]},
      levelText(fc.risk_levels, i), el('span', {class: 'range'}, ` ${ranges[i]}`))));
    const [from, to] = fc.time_blocks[0];
    $('legend-unit').textContent = `Expected crashes per zone in one ${to - from}-hour block at resolution ${fc.resolution} `
      + `(model version ${fc.model_version}, ${fc.stage}). Levels are the quintiles of the training zone-slots.`;
  }

  function renderTop() {
    const fc = view0.fc;
    const b = state.block;
    const top = [...fc.features].sort((x, y) => y.properties.expected_crashes[b] - x.properties.expected_crashes[b]).slice(0, 10);
    $('top-zones').tBodies[0].replaceChildren(...top.map((f, i) => el('tr', {'data-zone': f.id},
      el('td', {}, String(i + 1)),
      el('td', {}, el('button', {type: 'button', class: 'link', onclick: () => showZone(view0, f, true)}, f.id)),
      el('td', {}, levelText(fc.risk_levels, f.properties.risk_index[b])),
      el('td', {class: 'num'}, sig(f.properties.expected_crashes[b])))));
    $('top-title').textContent = `The 10 riskiest zones, ${dayLabel(state.date)}, ${blockLabel(fc.time_blocks[b])} h`;
  }

  // ---- the zone panel ----------------------------------------------------------------------------
  function selectedLayer() {
    return state.zone && (state.zone.view === 1 ? view1 : view0).byZone.get(state.zone.id);
  }

  function clearZone() {
    const previous = selectedLayer();
    state.zone = null;
    if (previous) previous.setStyle(zoneStyle(previous.feature));
    const panel = $('zone-panel');
    for (const key of Object.keys(panel.dataset)) delete panel.dataset[key];
    $('zone-title').textContent = 'Zone';
    $('zone-body').textContent = 'Click a zone on the map, or type its id or a lat, lon above.';
  }

  function showZone(view, feature, focus = false) {
    const previous = selectedLayer();
    state.zone = {view: view.index, id: feature.id};
    if (previous) previous.setStyle(zoneStyle(previous.feature));
    const layer = view.byZone.get(feature.id);
    layer.setStyle(zoneStyle(feature));
    layer.bringToFront();
    const fc = view.fc;
    const p = feature.properties;
    const b = state.block;
    const index = p.risk_index[b];
    const panel = $('zone-panel');
    Object.assign(panel.dataset, {
      zone: feature.id, resolution: fc.resolution, date: fc.date, block: b, expected: String(p.expected_crashes[b]),
      p: String(p.p_at_least_one[b]), level: fc.risk_levels[index], riskIndex: index,
      modelVersion: fc.model_version, stage: fc.stage,
    });
    $('zone-title').textContent = `Zone ${feature.id}`;
    const history = el('div', {id: 'zone-history'}, 'Loading the observed history…');
    $('zone-body').replaceChildren(el('dl', {},
      el('dt', {}, 'Level'), el('dd', {id: 'zone-level'}, levelText(fc.risk_levels, index)),
      el('dt', {}, 'Expected crashes'), el('dd', {id: 'zone-expected'}, sig(p.expected_crashes[b])),
      el('dt', {}, 'P(at least one crash)'), el('dd', {id: 'zone-p'}, percent(p.p_at_least_one[b])),
      el('dt', {}, 'When'), el('dd', {}, `${dayLabel(fc.date)}, ${blockLabel(fc.time_blocks[b])} h (New York)`),
      el('dt', {}, 'Answered by'), el('dd', {id: 'zone-model'}, `model version ${fc.model_version}, stage ${fc.stage}`),
    ), history);
    if (focus) {
      view.map.setView(layer.getBounds().getCenter(), Math.max(view.map.getZoom(), 10 + fc.resolution - 7));
      $('zone-panel').scrollIntoView({block: 'nearest'});
    }
    loadHistory(view, feature.id, history);
  }

  async function loadHistory(view, zone, target) {
    const key = `${view.stage}|${zone}`;
    if (!historyCache.has(key)) historyCache.set(key, getJSON(api(view.stage, `history?zone=${zone}`)));
    try {
      const h = await historyCache.get(key);
      if (!h.crashes_by_block) {
        target.textContent = `Observed history: ${h.note || 'not available'}.`;
        return;
      }
      const blocks = view.fc.time_blocks;
      const most = Math.max(...h.crashes_per_100_days, 1e-9);
      target.replaceChildren(el('table', {id: 'history-table'},
        el('caption', {}, `Observed crashes in this zone on ${h.days} training days (${h.first_day} to ${h.last_day})`),
        el('thead', {}, el('tr', {}, el('th', {}, 'Block'), el('th', {}, 'Crashes'), el('th', {}, 'Per 100 days'), el('th', {}, ''))),
        el('tbody', {}, ...blocks.map((b, i) => el('tr', {'data-crashes': h.crashes_by_block[i]},
          el('th', {scope: 'row'}, `${blockLabel(b)} h`), el('td', {class: 'num'}, String(h.crashes_by_block[i])),
          el('td', {class: 'num'}, fixed(h.crashes_per_100_days[i], 1)),
          el('td', {class: 'bar-cell'}, el('span', {class: 'bar', style: `width:${(100 * h.crashes_per_100_days[i]) / most}%`})))))));
    } catch (err) {
      historyCache.delete(key);
      target.textContent = `No history: ${err.message}`;
    }
  }

  // Keyboard way to the panel: a zone id (any resolution; the map switches to it) or "lat, lon".
  async function findZone(event) {
    event.preventDefault();
    const query = $('zone-query').value.trim();
    const point = query.match(/^(-?\d+(?:\.\d+)?)\s*[,\s]\s*(-?\d+(?:\.\d+)?)$/);
    if (/^[0-9a-f]{15}$/i.test(query)) {
      const resolution = parseInt(query[2], 16);
      if (resolution !== state.resolution && [7, 8, 9].includes(resolution)) {
        state.resolution = resolution;
        $('resolution').value = String(resolution);
        await reload();
      }
      const layer = view0.byZone.get(query.toLowerCase());
      if (layer) return showZone(view0, layer.feature, true);
      return status(`Zone ${query} is not one of the model's zones.`);
    }
    if (point) {
      const latlng = L.latLng(Number(point[1]), Number(point[2]));
      const found = zoneAt(view0, latlng);
      if (found) return showZone(view0, found.feature, true);
      return status(`No zone at ${latlng.lat}, ${latlng.lng}: outside the model's area.`);
    }
    status('Type a zone id (15 hex digits) or a latitude and longitude such as 40.758, -73.9855.');
  }

  // The zone whose hexagon holds the point (bounds first, then a ray cast on the ring).
  function zoneAt(view, latlng) {
    for (const layer of view.byZone.values()) {
      if (!layer.getBounds().contains(latlng)) continue;
      const ring = layer.feature.geometry.coordinates[0];
      let inside = false;
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const [xi, yi] = ring[i];
        const [xj, yj] = ring[j];
        if ((yi > latlng.lat) !== (yj > latlng.lat)
          && latlng.lng < ((xj - xi) * (latlng.lat - yi)) / (yj - yi) + xi) inside = !inside;
      }
      if (inside) return layer;
    }
    return null;
  }

  // ---- route check -------------------------------------------------------------------------------
  function setPick(which) {
    state.pick = state.pick === which ? null : which;
    for (const end of ['start', 'end']) $(`pick-${end}`).setAttribute('aria-pressed', String(state.pick === end));
    document.body.classList.toggle('picking', state.pick !== null);
    if (state.pick) status(`Click the map to set the route's ${state.pick}.`);
  }

  function onMapClick(view, event) {
    if (!state.pick) return;
    $(`${state.pick}-lat`).value = event.latlng.lat.toFixed(5);
    $(`${state.pick}-lon`).value = event.latlng.lng.toFixed(5);
    status('');
    setPick(state.pick);
  }

  async function checkRoute(event) {
    event.preventDefault();
    const point = (end) => ({latitude: Number($(`${end}-lat`).value), longitude: Number($(`${end}-lon`).value)});
    const payload = {start: point('start'), end: point('end'), departure: $('departure').value, resolution: state.resolution};
    const result = $('route-result');
    result.textContent = 'Checking the route…';
    try {
      drawRoute(await post(api(view0.stage, 'route'), payload));
    } catch (err) {
      view0.route.clearLayers();
      result.replaceChildren(el('p', {class: 'error'}, `Route not checked: ${err.message}`));
    }
  }

  function drawRoute(r) {
    const names = view0.fc.risk_levels;
    const stretch = r.riskiest_stretch;
    const path = r.cells.map((c) => [c.latitude, c.longitude]);
    view0.route.clearLayers();
    // Cells in their level's colour; the riskiest stretch's cells last (on top), outlined in bold.
    const inStretch = (i) => i >= stretch.first && i <= stretch.last;
    const order = [...r.cells.keys()].sort((i, j) => inStretch(i) - inStretch(j));
    for (const i of order) {
      const c = r.cells[i];
      const style = {pane: 'route', interactive: false, fillOpacity: 1, fillColor: c.known ? PALETTE[c.risk_index] : UNKNOWN,
        color: inStretch(i) ? '#000' : '#08306b', weight: inStretch(i) ? 3.5 : 1.5};
      const hexagon = view0.byZone.get(c.zone);
      view0.route.addLayer(hexagon ? L.polygon(hexagon.getLatLngs(), style) : L.circleMarker(path[i], {...style, radius: 5}));
    }
    const line = {pane: 'route', interactive: false, color: '#08306b'};
    view0.route.addLayer(L.polyline(path, {...line, weight: 2, dashArray: '5 5'}));
    view0.route.addLayer(L.polyline(path.slice(stretch.first, stretch.last + 1), {...line, color: '#000', weight: 4}));
    view0.map.fitBounds(L.latLngBounds(path), {padding: [30, 30]});
    const riskiest = r.cells.slice(stretch.first, stretch.last + 1);
    const worst = Math.max(...riskiest.map((c) => (c.known ? c.risk_index : 0)));
    $('route-result').replaceChildren(el('dl', {
      id: 'route-summary', 'data-total': r.total_expected_crashes, 'data-cells': r.cells.length,
      'data-first': stretch.first, 'data-last': stretch.last,
    },
    el('dt', {}, 'Expected crashes on the trip'), el('dd', {id: 'route-total'}, sig(r.total_expected_crashes)),
    el('dt', {}, 'Cells crossed'), el('dd', {}, `${r.cells.length} (resolution ${r.resolution}), ${r.distance_km.toFixed(1)} km straight`),
    el('dt', {}, 'Riskiest stretch (bold outlines, solid line)'), el('dd', {id: 'route-stretch'},
      `cells ${stretch.first + 1}–${stretch.last + 1}: ${sig(stretch.expected_crashes)} expected, up to `, levelText(names, worst)),
    el('dt', {}, 'Departure block'), el('dd', {}, `${dayLabel(r.date)}, ${blockLabel(r.block)} h`),
    el('dt', {}, 'Answered by'), el('dd', {}, `model version ${r.model_version}, stage ${r.stage}, weather ${r.weather_source}`)),
    el('p', {class: 'note'}, 'Straight-line H3 path, not streets: it shows the corridor between the two points, '
      + 'and may cross water or parks. Grey cells are outside the model\'s zones.'));
  }

  // ---- outlook -----------------------------------------------------------------------------------
  async function loadOutlook() {
    const body = $('outlook').tBodies[0];
    try {
      const o = await post(api(view0.stage, 'outlook'), {start_date: state.dates[0], days: 7});
      const names = state.meta.risk_levels;
      body.replaceChildren(...o.days.map((d) => el('tr', {'data-date': d.date, 'data-expected': d.expected_crashes},
        el('td', {}, d.date), el('td', {}, d.weekday), el('td', {}, d.holiday || '–'),
        el('td', {class: 'num'}, fixed(d.expected_crashes, 1)), el('td', {}, levelText(names, d.day_level_index)),
        el('td', {}, Object.entries(d.drivers).map(([k, v]) => `${k} ×${fixed(v, 2)}`).join(', ')),
        el('td', {}, d.weather_source))));
      $('outlook-title').textContent = `Citywide outlook (model version ${o.model_version}, ${o.stage})`;
    } catch (err) {
      body.replaceChildren(el('tr', {}, el('td', {colSpan: 7, class: 'error'}, `No outlook: ${err.message}`)));
    }
  }

  // ---- controls ----------------------------------------------------------------------------------
  function buildControls(meta, fc) {
    const last = meta.supported_dates[meta.supported_dates.length - 1];
    state.dates = [...Array(7).keys()].map((i) => addDays(meta.today, i)).filter((d) => d <= last);
    $('date').replaceChildren(...state.dates.map((d) => el('option', {value: d}, dayLabel(d))));
    $('date').value = state.date;
    $('resolution').value = String(state.resolution);
    const hour = Number(newYorkNow().slice(11, 13));
    state.block = Math.max(0, fc.time_blocks.findIndex(([from, to]) => from <= hour && hour < to));
    $('blocks').replaceChildren(...fc.time_blocks.map((b, i) => el('button', {
      type: 'button', value: String(i), onclick: () => setBlock(i),
    }, `${blockLabel(b)} h`)));
    setBlock(state.block);
    const now = newYorkNow();
    $('departure').value = now.startsWith(meta.today) ? now : `${meta.today}${now.slice(10)}`;

    const stepDate = (step) => {
      const i = state.dates.indexOf(state.date) + step;
      if (i >= 0 && i < state.dates.length) { $('date').value = state.dates[i]; changeDate(); }
    };
    const changeDate = () => {
      state.date = $('date').value;
      const i = state.dates.indexOf(state.date);
      $('date-prev').disabled = i === 0;
      $('date-next').disabled = i === state.dates.length - 1;
      reload();
    };
    $('date-prev').disabled = true; // the first date is today
    $('date').addEventListener('change', changeDate);
    $('date-prev').addEventListener('click', () => stepDate(-1));
    $('date-next').addEventListener('click', () => stepDate(1));
    $('resolution').addEventListener('change', () => { state.resolution = Number($('resolution').value); reload(); });
    $('zone-form').addEventListener('submit', findZone);
    $('pick-start').addEventListener('click', () => setPick('start'));
    $('pick-end').addEventListener('click', () => setPick('end'));
    $('route-form').addEventListener('submit', checkRoute);
    $('stage').value = state.stage;
    $('stage').addEventListener('change', () => switchStage($('stage').value));
    $('side-by-side').addEventListener('change', () => setSideBySide($('side-by-side').checked));
  }

  // The stage switch appears when the canary answers for staging at `<root>stage/staging/`.
  async function probeStages() {
    const answers = await Promise.all(STAGES.map((s) => fetch(api(s, 'metadata')).then((r) => r.ok, () => false)));
    STAGES.forEach((s, i) => { $('stage').querySelector(`option[value="${s}"]`).disabled = !answers[i]; });
    $('stage-switch').hidden = !answers[1];
  }

  async function switchStage(stage) {
    state.stage = stage;
    view0.stage = stage;
    view1.stage = other(stage);
    view0.route.clearLayers();
    await Promise.all([reload(), ...views().map(drawBoroughs), loadOutlook()]);
  }

  async function setSideBySide(on) {
    state.sideBySide = on;
    $('box-1').hidden = !on;
    document.body.classList.toggle('side-by-side', on);
    view0.map.invalidateSize();
    if (on) {
      view1.map.invalidateSize();
      view1.map.setView(view0.map.getCenter(), view0.map.getZoom(), {animate: false});
      await Promise.all([reload(), drawBoroughs(view1)]);
    }
  }

  // Moving either map moves the other (side by side).
  function syncViews(a, b) {
    let syncing = false;
    const follow = (from, to) => from.map.on('move', () => {
      if (syncing || !state.sideBySide) return;
      syncing = true;
      to.map.setView(from.map.getCenter(), from.map.getZoom(), {animate: false});
      syncing = false;
    });
    follow(a, b);
    follow(b, a);
  }

  // ---- start -------------------------------------------------------------------------------------
  const view0 = makeView(0, state.stage);
  const view1 = makeView(1, other(state.stage));
  syncViews(view0, view1);
  window.vzMap = {map: view0.map, zoneLayer: null, firstRenderMs: null, palette: PALETTE, state, views: [view0, view1]};

  // The first draw asks for metadata, the default zones and the outlines at once (one round trip).
  async function start() {
    try {
      const [meta, fc] = await Promise.all([
        getJSON(api(state.stage, 'metadata')),
        getJSON(api(state.stage, 'zones')),
        drawBoroughs(view0),
      ]);
      Object.assign(state, {meta, resolution: fc.resolution, date: fc.date});
      zoneCache.set(`${state.stage}|${fc.resolution}|${fc.date}`, Promise.resolve(fc));
      buildControls(meta, fc);
      drawZones(view0, fc, true);
      refreshText();
      await drawn();
      window.vzMap.firstRenderMs = performance.now();
      document.body.dataset.state = 'ready';
      status('');
      loadOutlook();
      probeStages();
    } catch (err) {
      status(`The map could not load: ${err.message}`, true);
    }
  }
  start();
})();
