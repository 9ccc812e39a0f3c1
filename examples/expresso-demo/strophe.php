<?php
// An independent web XMPP client on the user's persistent stream: Strophe.js
// attaches (XEP-0124 prebind) to a BOSH session that prebind.php asked the
// sidecar for. The page never sees a password.
declare(strict_types=1);
require __DIR__ . '/config.php';
demo_page_session();
?><!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Strophe.js on imsidecar</title>
<link rel="stylesheet" href="style.css">
<script src="<?= h(demo_vendor('strophe.js', '5.0.0', 'dist/strophe.umd.min.js')) ?>"></script>
</head>
<body>
<h1>Strophe.js, attached to the same XMPP stream</h1>
<p id="state">connecting</p>
<form id="send"><input name="to" placeholder="to (JID)"> <input name="body" placeholder="message"> <button>Send</button></form>
<ul id="log"></ul>
<script>
const logLine = (cls, text) => {
  const li = document.createElement('li');
  li.className = cls;
  li.textContent = text;
  document.getElementById('log').append(li);
};
fetch('prebind.php', { credentials: 'same-origin' }).then(r => r.json()).then(p => {
  const conn = new Strophe.Connection(<?= json_encode(demo_bosh_url(), JSON_UNESCAPED_SLASHES) ?>);
  conn.addHandler(m => {
    const body = m.getElementsByTagName('body')[0];
    if (body) logLine('them', Strophe.getBareJidFromJid(m.getAttribute('from')) + ': ' + body.textContent);
    return true;
  }, null, 'message');
  conn.addHandler(pr => {
    logLine('presence', Strophe.getBareJidFromJid(pr.getAttribute('from') || '') + ' ' + (pr.getAttribute('type') || 'available'));
    return true;
  }, null, 'presence');
  conn.attach(p.jid, p.sid, p.rid, status => {
    const state = document.getElementById('state');
    if (status === Strophe.Status.ATTACHED) {
      state.textContent = 'attached ' + p.jid;
      state.className = 'attached';
      conn.send($pres());
    } else if (status === Strophe.Status.CONNFAIL || status === Strophe.Status.DISCONNECTED) {
      state.textContent = 'disconnected';
      state.className = 'disconnected';
    }
  });
  document.getElementById('send').onsubmit = e => {
    e.preventDefault();
    const f = e.target;
    conn.send($msg({ to: f.to.value, type: 'chat' }).c('body').t(f.body.value));
    logLine('me', f.body.value);
    f.body.value = '';
  };
});
</script>
</body>
</html>
