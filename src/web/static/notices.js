// Penstock: the vendor's ending notices. While the caller has a live session whose access ends
// within 10 minutes, a banner at the top of every console page says so ("your access ends in 1
// minute (at …)"), refreshed every 15 s from /api/v1/notices without reloading the page.
'use strict';
(() => {
  const box = document.getElementById('notices');
  if (!box) return;
  const show = (list) => {
    box.replaceChildren();
    for (const n of list) {
      const p = document.createElement('p');
      p.className = 'notice';
      p.dataset.session = n.session;
      p.textContent = `${n.protocol.toUpperCase()} session on ${n.target}: ${n.message}.`;
      box.appendChild(p);
    }
  };
  const poll = async () => {
    try {
      const r = await fetch('/api/v1/notices', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      if (r.ok) show(await r.json());
    } catch {
      // The gateway is unreachable for a moment: keep what is shown.
    }
  };
  poll();
  setInterval(poll, 15000);
})();
