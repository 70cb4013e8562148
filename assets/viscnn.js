// PNG/SVG export buttons (class export-btn, data-target = a figure's container id, data-format = png|svg).
// Everything happens in the browser: Plotly.downloadImage for Plotly figures, cytoscape's own PNG for
// the 2D circuit, its SVG from the server. File names carry the model, the target and the time.
(function () {
  function stamp() {
    return new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  }
  function safe(s) { return String(s || '').replace(/[^A-Za-z0-9_.-]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 60); }
  function baseName(what) {
    var q = new URLSearchParams(location.search);
    return ['viscnn', safe(q.get('model')), safe(q.get('target') || 'loss'), safe(q.get('set')), what, stamp()]
      .filter(Boolean).join('-');
  }
  function save(blob, name) {
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob); a.download = name;
    document.body.appendChild(a); a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  document.addEventListener('click', function (ev) {
    var b = ev.target.closest && ev.target.closest('.export-btn');
    if (!b) return;
    var target = b.getAttribute('data-target'), fmt = b.getAttribute('data-format');
    var name = baseName(b.getAttribute('data-what') || target);
    var el = document.getElementById(target);
    if (!el) return;
    if (el.classList.contains('cyto-box') || target === 'cyto') {
      var cy = el._cyreg && el._cyreg.cy;
      if (!cy) return;
      if (fmt === 'svg') {  // drawn on the server from what the page shows (viscnn/app/figures/circuit_svg.py)
        fetch('/viscnn-export/circuit2d.svg', {method: 'POST', headers: {'Content-Type': 'application/json'},
              body: JSON.stringify({elements: cy.json().elements, title: name})})
          .then(function (r) { return r.ok ? r.blob() : r.text().then(function (t) { throw new Error(t); }); })
          .then(function (blob) { save(blob, name + '.svg'); })
          .catch(function (e) { alert('SVG export failed: ' + e.message); });
      } else {
        save(cy.png({full: true, scale: 2, output: 'blob', bg: 'white'}), name + '.png');
      }
      return;
    }
    var gd = el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
    if (!gd || !window.Plotly) return;
    window.Plotly.toImage(gd, {format: fmt, scale: fmt === 'png' ? 2 : 1}).then(function (url) {
      return fetch(url).then(function (r) { return r.blob(); });
    }).then(function (blob) { save(blob, name + '.' + fmt); });
  });
})();

// viscnn.after3d(value): a Promise of value, resolved once the 3D graph has painted (or after 5 s, e.g. on
// an error page). Clientside callbacks hand the 2D circuit and the tables to the page through it, so the
// 3D graph, the main view, gets the browser's one main thread first on page load.
window.viscnn = window.viscnn || {};
window.viscnn.after3d = function (value) {
  return new Promise(function (resolve) {
    var t0 = Date.now();
    (function poll() {
      var g = document.querySelector('#graph3d .js-plotly-plot');
      if ((g && g._fullLayout && g._fullLayout.scene) || Date.now() - t0 > 5000) {
        requestAnimationFrame(function () { setTimeout(function () { resolve(value); }, 0); });
      } else { setTimeout(poll, 50); }
    })();
  });
};

// viscnn.loadScript(src): a Promise that the script at src has run (each src is loaded once).
window.viscnn.loadScript = function (src) {
  var cache = window.viscnn._scripts = window.viscnn._scripts || {};
  if (!cache[src]) {
    cache[src] = new Promise(function (resolve, reject) {
      var s = document.createElement('script');
      s.src = src; s.onload = resolve;
      s.onerror = function () { reject(new Error('could not load ' + src)); };
      document.head.appendChild(s);
    });
  }
  return cache[src];
};

// viscnn.deferred(component): the component (or list of components), as Dash's JSON, once the 3D graph has
// painted and the scripts of its component libraries that the server held back from the page have run
// (window.viscnnDeferredScripts: namespace -> URL, set by viscnn/app/server.py).
window.viscnn.deferred = function (component) {
  var list = Array.isArray(component) ? component : [component];
  var urls = window.viscnnDeferredScripts || {};
  return window.viscnn.after3d(null).then(function () {
    return Promise.all(list.map(function (c) {
      return urls[c.namespace] && !window[c.namespace] ? window.viscnn.loadScript(urls[c.namespace]) : null;
    }));
  }).then(function () { return component; });
};
