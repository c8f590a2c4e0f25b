// Penstock replay: asciinema-player on the recording this page names (data-cast), starting at
// data-start seconds (a search hit's moment), at data-speed.
'use strict';
(() => {
  const el = document.getElementById('player');
  if (!el || !window.AsciinemaPlayer) return;
  const start = Math.max(0, Number(el.dataset.start) || 0);
  const speed = Number(el.dataset.speed) || 1;
  // The frame at that moment is shown first (a search hit's line is on it); play continues
  // from there.
  const player = window.AsciinemaPlayer.create(el.dataset.cast, el, {
    startAt: start,
    poster: `npt:${start}`,
    speed,
    autoPlay: false,
    preload: true,
    idleTimeLimit: 2,
    fit: 'width',
    controls: true,
  });
  window.penstockPlayer = player;
})();
