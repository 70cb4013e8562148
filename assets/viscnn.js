// PNG/SVG export buttons (class export-btn, data-target = a figure's container id, data-format = png|svg).
// Everything happens in the browser: Plotly.downloadImage for Plotly figures, cytoscape's own png/svg for
// the 2D circuit. File names carry the model, the target and the time.
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
      if (fmt === 'svg') {
        if (typeof cy.svg !== 'function') { alert('SVG export of the 2D circuit is not available in this build'); return; }
        save(new Blob([cy.svg({full: true, scale: 1})], {type: 'image/svg+xml'}), name + '.svg');
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
