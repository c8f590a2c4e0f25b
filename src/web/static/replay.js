// Penstock replay: asciinema-player on the recording this page names (data-cast), starting at
// data-start seconds (a search hit's moment), at data-speed.
'use strict';
(() => {
  const el = document.getElementById('player');
  if (!el || !window.AsciinemaPlayer) return;
  const start = Math.max(0, Number(el.dataset.start) || 0);
  const speed = Number(el.dataset.speed) || 1;
  const player = window.AsciinemaPlayer.create(el.dataset.cast, el, {
    startAt: start,
    speed,
    autoPlay: true,
    preload: true,
    idleTimeLimit: 2,
    fit: 'width',
    controls: true,
  });
  window.penstockPlayer = player;
})();
