// Penstock live view: shows the screen the gateway renders for a live session. Read-only: it
// never sends anything but the close.
'use strict';
(() => {
  const screen = document.getElementById('screen');
  const status = document.getElementById('live-status');
  if (!screen || !status) return;
  const url = `wss://${location.host}${location.pathname.replace(/\/$/, '')}/ws`;
  const ws = new WebSocket(url);
  let ended = false;
  ws.addEventListener('open', () => { status.textContent = 'Live'; });
  ws.addEventListener('message', (m) => {
    let d;
    try { d = JSON.parse(m.data); } catch { return; }
    if (typeof d.screen === 'string') screen.textContent = d.screen;
    if (typeof d.status === 'string') status.textContent = d.status;
    if (d.ended) { ended = true; screen.classList.add('ended'); }
  });
  ws.addEventListener('close', () => {
    if (!ended && status.textContent === 'Live') status.textContent = 'Disconnected; reload the page to watch again.';
  });
  ws.addEventListener('error', () => { status.textContent = 'Cannot watch this session (ended, or not allowed).'; });
})();
