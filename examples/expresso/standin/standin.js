// A stand-in for Expresso Livre 2.5's messenger client (jquery.xmpp.js and
// the im.js glue), written for the tests from the wire behaviour described
// in docs/EXPRESSO.md ("What the 2.5 client does on the wire"). It is not
// Expresso's code: it reproduces, on purpose, the quirks a server must
// survive, and records what a user of the real client would see.
//
//   - session creation, SASL PLAIN with the auth blob from auth_messenger.php
//     plus "==" (or the bind.php fallback when the blob is empty), stream
//     restart, bind and session, chained request after request;
//   - every request is a jQuery $.post of an XML string: Content-Type
//     application/x-www-form-urlencoded; stanzas without a namespace of
//     their own (roster get) and without an id;
//   - hold=1 with a poll pending while commands are sent: two, sometimes
//     three requests in flight, rids possibly arriving out of order; rids
//     start anywhere below 10^10 (so above 2^32);
//   - answers are parsed as HTML by jQuery after regex rewrites (<body> →
//     <div class='body'>, "style" → EVENT_DENY, ...), so a message body is
//     the innerHTML of a div, and an XML declaration, a CDATA section or a
//     namespace prefix on <body> breaks the client;
//   - no check of type='terminate': the client learns of the end only from
//     an HTTP error, and polls again meanwhile (afterTerminate counts).
//
// window.standin holds the state the test driver (drive.mjs) reads.
(function ($) {
  'use strict';
  var NS = 'http://jabber.org/protocol/httpbind';
  var S = window.standin = {
    connected: false, failed: null, sid: null, rid: 0, inflight: 0, maxInflight: 0,
    roster: {}, presence: {}, presenceLog: [], messages: [], states: [], requests: [],
    terminated: false, afterTerminate: 0, stopped: false, log: [], answers: []
  };

  function note(what) { S.log.push(new Date().toISOString() + ' ' + what); }
  function fail(why, text) { S.failed = why; note('FAILED ' + why + (text ? ': ' + text.slice(0, 400) : '')); }
  function bare(jid) { return String(jid || '').split('/')[0]; }

  // asHTML applies the same rewrites the 2.5 client applies to every answer
  // before giving it to jQuery, which parses it as HTML.
  function asHTML(text) {
    var t = String(text);
    t = t.replace(/on(?:blur|change|click|dblclick|error|focus|keydown|keypress|keyup|mousedown|mousemove|mouseout|mouseover|mouseup|resize|select|unload)/gi, 'EVENT_DENY');
    t = t.replace(/style/gi, 'EVENT_DENY');
    t = t.replace(/(img|script|div|span|iframe) /gi, function (m, tag) { return tag.toUpperCase() + '_DENY '; });
    t = t.replace(/<\/body>/gi, '</div>');
    t = t.replace(/<body/gi, "<div class='body'");
    return $(t);
  }

  function wrap(attrs, inner) {
    return "<body rid='" + attrs.rid + "' xmlns='" + NS + "' sid='" + S.sid + "'" + (attrs.extra || '') +
      (inner === null ? '/>' : '>' + inner + '</body>');
  }

  // post is one chained step of the login: a plain $.post, as the client does.
  function post(url, xml, done) {
    S.requests.push(xml);
    $.post(url, xml, function (text) { S.answers.push(text); done(text); }, 'text').fail(function (x) { fail('HTTP ' + x.status + ' on ' + url); });
  }

  // request is a poll or a command after login: counted, so that a poll is
  // only issued while nothing else is in flight (the client's one-poll rule).
  function request(xml, done) {
    S.inflight++;
    S.maxInflight = Math.max(S.maxInflight, S.inflight);
    S.requests.push(xml);
    $.ajax({ type: 'POST', url: S.url, data: xml, dataType: 'text' })
      .done(function (text) { S.inflight--; S.answers.push(text); done(text); })
      .fail(function (x, status, err) {
        S.inflight--;
        S.connected = false;
        S.stopped = true;
        note('network error: HTTP ' + x.status + ' ' + (err || status));
      });
  }

  function listen() {
    if (S.inflight > 0 || !S.sid || S.stopped) return;
    request(wrap({ rid: ++S.rid }, ''), function (text) {
      var $b = asHTML(text);
      if ($b.children().length > 0) handle(text);
      if ($b.attr('type') === 'terminate') {
        // The real client does not look: it polls again with the dead sid,
        // and stops only on an HTTP error. The stand-in does the same but
        // gives up after 200 such answers, so that a test stays bounded.
        S.terminated = true;
        S.connected = false;
        S.afterTerminate = (S.afterTerminate || 0) + 1;
        if (S.afterTerminate === 1) note('terminate: ' + ($b.attr('condition') || ''));
        if (S.afterTerminate >= 200) {
          S.stopped = true;
          note('still polling after 200 terminate answers: gave up');
          return;
        }
      }
      listen();
    });
  }

  function command(raw) {
    request(wrap({ rid: ++S.rid }, raw), function (text) { handle(text); listen(); });
  }

  function handle(text) {
    var $r = asHTML(text);
    $r.find('message').each(function () {
      var $m = $(this), $div = $m.find('div');
      if ($div.length) {
        S.messages.push({ from: $m.attr('from'), html: $div.html(), text: $div.text() });
        return;
      }
      $.each(['active', 'composing', 'paused', 'inactive', 'gone'], function (i, st) {
        if ($m.find(st).length) S.states.push({ from: $m.attr('from'), state: st });
      });
    });
    $r.find('query').find('item').each(function () {
      var $i = $(this);
      if ($.trim($i.attr('subscription')) === 'remove') return;
      S.roster[bare($i.attr('jid'))] = { name: $i.attr('name'), subscription: $i.attr('subscription') };
    });
    $r.find('presence').each(function () {
      var $p = $(this), type = $.trim($p.attr('type') || ''), from = $p.attr('from');
      if (type && type !== 'unavailable') {
        note('subscription ' + type + ' from ' + from);
        if (type === 'subscribe') command("<presence from='" + S.jid + "' to='" + from + "' type='subscribed'></presence>");
        return;
      }
      var show = $p.find('show').html() || type || 'available';
      var status = $p.find('status').length ? $p.find('status').html() : '';
      S.presence[bare(from)] = { show: show, status: status };
      S.presenceLog.push({ from: from, show: show, status: status });
    });
  }

  function online() {
    S.connected = true;
    note('connected');
    // As the client's onConnect: roster, then initial presence, back to
    // back (two requests in flight), then the poll loop.
    command("<iq type='get'><query xmlns='jabber:iq:roster'/></iq>");
    setPresence(null);
    listen();
  }

  function afterAuth(text) {
    if (!asHTML(text).find('success').length) return fail('Invalid credentials', text);
    post(S.url, wrap({ rid: ++S.rid, extra: " to='" + S.domain + "' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'" }, null), function () {
      post(S.url, wrap({ rid: ++S.rid }, "<iq type='set' id='_bind_auth_2' xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>" +
        S.resource + '</resource></bind></iq>'), function () {
        post(S.url, wrap({ rid: ++S.rid }, "<iq type='set' id='_session_auth_2' xmlns='jabber:client'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"), online);
      });
    });
  }

  function authenticate(o) {
    if (o.auth && $.trim(o.auth) !== '') {
      // The blob comes without its "==" padding: the client adds it back.
      post(S.url, wrap({ rid: ++S.rid }, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + o.auth + '==</auth>'), afterAuth);
      return;
    }
    // Empty blob: ask bind.php, relative to the page, for one; 2.5 ships no
    // bind.php, so this stops here with no error shown to the user.
    ++S.rid;
    note('no auth blob: POST bind.php');
    $.post('bind.php', S.url, function (data) {
      post(S.url, wrap({ rid: S.rid }, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + $.trim(data) + '</auth>'), afterAuth);
    }, 'text').fail(function (x) { fail('bind.php: HTTP ' + x.status); });
  }

  function setPresence(p) {
    var x = "<presence xmlns='jabber:client'>";
    if (p && p.show && p.show !== 'available') x += '<show>' + p.show + '</show>';
    if (p && p.status) x += '<status>' + p.status + '</status>';
    command(x + '</presence>');
  }

  S.connect = function (o) {
    S.url = o.url || '/http-bind';
    S.domain = o.domain;
    S.jid = o.username + '@' + o.domain;
    S.resource = o.resource || '';
    S.rid = o.rid || Math.round(Math.random() * Math.pow(10, 10));
    var create = "<body rid='" + S.rid + "' xmlns='" + NS + "' to='" + o.domain + "' xml:lang='en' wait='" + (o.wait || 60) +
      "' inactivity='" + (o.inactivity || 60) + "' hold='1' content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh'/>";
    post(S.url, create, function (text) {
      var c = S.creation(text);
      S.sid = c.sid;
      if (!S.sid) return fail('no sid in the session creation answer', text);
      if (!c.plain) return fail('No auth method supported', text);
      authenticate(o);
    });
  };

  // creation reads a session creation answer as the client does: the sid
  // and PLAIN must both be in it.
  S.creation = function (text) {
    var $b = asHTML(text);
    return { sid: $b.attr('sid'), plain: $b.find("mechanism:contains('PLAIN')").length > 0 };
  };
  S.handle = handle;

  // The user's actions, as the UI triggers them.
  S.send = function (to, body) {
    command("<message type='chat' to='" + to + "/Chat' xmlns='jabber:client'><body>" + body + '</body></message>');
  };
  S.chatState = function (to, state) {
    command("<message type='chat' to='" + to + "' from='" + S.jid + '/' + S.resource + "'><" + state +
      " xmlns='http://jabber.org/protocol/chatstates'/></message>");
  };
  S.setPresence = setPresence;
  S.disconnect = function () {
    S.stopped = true;
    S.requests.push('terminate');
    $.post(S.url, wrap({ rid: ++S.rid, extra: " type='terminate'" }, "<presence xmlns='jabber:client' type='unavailable'/>"), function () {
      S.connected = false;
      note('disconnected');
    }, 'text');
  };

  // im.js's boot: POST auth_messenger.php (no parameters), then connect
  // with what it answered.
  S.boot = function (authURL, rid) {
    $.ajax({ type: 'POST', url: authURL, dataType: 'json' }).done(function (d) {
      S.auth = d;
      if (d.error) return fail('auth_messenger.php: ' + d.error);
      if ($.trim(d.dt__b) === '') return fail('auth_messenger.php: no BOSH URL');
      S.connect({ resource: d.dt__a, url: d.dt__b, domain: d.dt__c, username: d.dt__d, auth: d.dt__e, rid: rid });
    }).fail(function (x) { fail('auth_messenger.php: HTTP ' + x.status); });
  };
}(jQuery));
