// Penstock RDP player: draws the frames the gateway decodes (GET data-frame?t=&p=) on a
// canvas. Play asks for the screen every STEP seconds of recording time (times the speed);
// 204 means unchanged. Seeking backwards makes the server start a new decoder. Key-log links
// (data-t) seek instead of reloading.
'use strict';
// What both modes share: a random id per page (the server keeps this player's decoder under
// it) and drawing a fetched PNG on the canvas, resized to the desktop's size.
const rdpPlayerId = () => Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
const rdpDraw = async (canvas, ctx, blob) => {
  const img = await createImageBitmap(blob);
  if (canvas.width !== img.width || canvas.height !== img.height) {
    canvas.width = img.width;
    canvas.height = img.height;
  }
  ctx.drawImage(img, 0, 0);
};
// Live mode (#rdp-live): the latest screen of a live session, asked for every POLL ms, until
// the answer says the session ended.
(() => {
  const root = document.getElementById('rdp-live');
  if (!root) return;
  const POLL = 300;
  const canvas = document.getElementById('rdp-screen');
  const ctx = canvas.getContext('2d');
  const status = document.getElementById('live-status');
  const player = rdpPlayerId();
  let frames = 0;
  const tick = async () => {
    try {
      const r = await fetch(`${root.dataset.frame}?p=${player}`, { credentials: 'same-origin' });
      if (r.status === 200) {
        await rdpDraw(canvas, ctx, await r.blob());
        frames += 1;
        root.dataset.frames = String(frames);
      } else if (r.status !== 204) {
        status.textContent = r.status === 404 ? 'The session is not live on this gateway.' : `Cannot show the session (${r.status}).`;
        return;
      }
      if (r.headers.get('x-penstock-ended') === '1') {
        status.textContent = 'The session ended.';
        return;
      }
      status.textContent = 'Live (read-only)';
    } catch (e) {
      status.textContent = `Connection lost: ${e}`;
    }
    setTimeout(tick, POLL);
  };
  tick();
})();
(() => {
  const root = document.getElementById('rdp-player');
  if (!root) return;
  const STEP = 0.25;
  const canvas = document.getElementById('rdp-screen');
  const ctx = canvas.getContext('2d');
  const play = document.getElementById('rdp-play');
  const seek = document.getElementById('rdp-seek');
  const time = document.getElementById('rdp-time');
  const status = document.getElementById('rdp-status');
  const speedSel = document.getElementById('rdp-speed');
  const duration = Number(root.dataset.duration) || 0;
  const player = rdpPlayerId();
  let t = Math.min(duration, Math.max(0, Number(root.dataset.start) || 0));
  let speed = Number(root.dataset.speed) || 1;
  let playing = false;
  let busy = false;
  let frames = 0;
  speedSel.value = String(speed);
  const fmt = (s) => {
    const m = Math.floor(s / 60);
    return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
  };
  const show = async (at, full) => {
    busy = true;
    try {
      const r = await fetch(`${root.dataset.frame}?t=${at.toFixed(3)}&p=${player}${full ? '&full=1' : ''}`, { credentials: 'same-origin' });
      // Before anything was drawn, the server answers with the first screen and its moment.
      const served = Number(r.headers.get('x-penstock-at'));
      if (full && served > at) {
        at = Math.min(duration, served);
        t = Math.max(t, at);
      }
      if (r.status === 200) {
        await rdpDraw(canvas, ctx, await r.blob());
        frames += 1;
        root.dataset.frames = String(frames);
      } else if (r.status !== 204) {
        status.textContent = `Cannot show the recording: ${(await r.text()).slice(0, 200)}`;
        playing = false;
        return;
      }
      seek.value = at.toFixed(1);
      time.textContent = `${fmt(at)} / ${fmt(duration)}`;
      root.dataset.at = at.toFixed(3);
      status.textContent = playing ? 'Playing' : (at >= duration ? 'End of recording' : 'Paused');
    } catch (e) {
      status.textContent = `Cannot show the recording: ${e}`;
      playing = false;
    } finally {
      busy = false;
    }
  };
  const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
  const loop = async () => {
    while (playing) {
      const began = performance.now();
      await show(t, false);
      const spent = (performance.now() - began) / 1000;
      if (spent < STEP) await sleep((STEP - spent) * 1000);
      if (!playing) break;
      if (t >= duration) {
        playing = false;
        play.textContent = 'Play';
        await show(duration, false);
        break;
      }
      t = Math.min(duration, t + Math.max(STEP, spent) * speed);
    }
  };
  play.addEventListener('click', () => {
    if (playing) {
      playing = false;
      play.textContent = 'Play';
      status.textContent = 'Paused';
      return;
    }
    if (t >= duration) t = 0;
    playing = true;
    play.textContent = 'Pause';
    loop();
  });
  const jump = async (to) => {
    t = Math.min(duration, Math.max(0, to));
    while (busy) await sleep(20);
    if (!playing) await show(t, true);
  };
  seek.addEventListener('change', () => jump(Number(seek.value)));
  speedSel.addEventListener('change', () => { speed = Number(speedSel.value) || 1; });
  for (const a of document.querySelectorAll('#rdp-keys a[data-t]')) {
    a.addEventListener('click', (ev) => { ev.preventDefault(); jump(Number(a.dataset.t)); });
  }
  show(t, true);
})();
