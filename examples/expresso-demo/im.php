<?php
declare(strict_types=1);
require __DIR__ . '/config.php';
demo_page_session();
$user = $_SESSION['phpgw_info']['expressomail']['user'];
$fullname = mb_convert_encoding($user['fullname'], 'UTF-8', DEMO_CHARSET);
// Events reach the page by PHP long-poll (api.php?action=poll) or, with
// ?transport=sse, as Server-Sent Events proxied by Apache (examples/apache).
$transport = ($_GET['transport'] ?? '') === 'sse' ? 'sse' : 'poll';
session_write_close();
?><!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Expresso IM</title>
<link rel="stylesheet" href="style.css"></head>
<body class="im" data-transport="<?= h($transport) ?>" data-user="<?= h($user['account_lid']) ?>">
<header>
  <strong>Expresso IM</strong>
  <span id="me"><?= h($fullname) ?></span>
  <select id="show" title="status">
    <option value="">Online</option><option value="chat">Free to chat</option><option value="away">Away</option>
    <option value="xa">Not available</option><option value="dnd">Do not disturb</option>
  </select>
  <input id="status" placeholder="status message">
  <span id="conn" class="pill">connecting…</span>
  <a href="logout.php" id="logout">Log out</a>
</header>
<main>
  <aside>
    <div id="requests"></div>
    <div id="contacts"></div>
    <form id="add" class="add">
      <input name="jid" placeholder="user@domain" required>
      <input name="name" placeholder="name">
      <input name="group" placeholder="group">
      <button>Add contact</button>
    </form>
    <!-- Group chat (XEP-0045): rooms panel, filled by app.js (rooms section) -->
    <section id="rooms-panel">
      <h3>Rooms <button type="button" id="rooms-refresh" title="refresh">↻</button></h3>
      <ul id="rooms"></ul>
      <form id="join-room" class="add">
        <input name="room" placeholder="room name or room@service" required>
        <input name="nick" placeholder="nickname (default: your name)">
        <input name="password" type="password" placeholder="password (optional)" autocomplete="off">
        <button>Join or create room</button>
      </form>
    </section>
  </aside>
  <section id="chats"><p class="empty">Pick a contact to chat.</p></section>
</main>
<audio id="beep" src="data:audio/wav;base64,UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="></audio>
<script src="app.js"></script>
</body></html>
