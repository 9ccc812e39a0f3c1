<?php
/*
 * Expresso Messenger through imsidecar: a drop-in replacement for Expresso
 * Livre 2.5's prototype/plugins/messenger/auth_messenger.php.
 *
 * The messenger (im.js + jquery.xmpp.js) POSTs here, without parameters,
 * and connects with what it gets back:
 *
 *   {"dt__a": resource, "dt__b": BOSH URL, "dt__c": Jabber domain,
 *    "dt__d": user, "dt__e": SASL PLAIN blob without its "==" padding}
 *   or {"error": "Not Permission"}
 *
 * Expresso's own file puts the user's password in dt__e. This one never
 * reads it: dt__e carries a placeholder, and dt__b is imsidecar's BOSH
 * endpoint on the same origin (default /im/http-bind, see
 * examples/apache/imsidecar.conf). imsidecar knows the user from the
 * session cookie the browser sends with every BOSH request, accepts any
 * PLAIN password for that session's own user, and attaches the browser to
 * the XMPP stream it already holds with the real credentials, server-side.
 *
 * Install: copy over prototype/plugins/messenger/auth_messenger.php (keep
 * the original to roll back). docs/EXPRESSO.md has the whole procedure.
 * Settings: the BOSH URL comes from the IMSIDECAR_BOSH_URL environment
 * variable (Apache: SetEnv IMSIDECAR_BOSH_URL /im/http-bind) or the
 * default below. The group check (groups_expresso_messenger) and the
 * domain (jabber_domain) are Expresso's own settings, as before;
 * jabber_url_1 is not read any more.
 *
 * Syntax: PHP 5.2 to 8.x (no short arrays, closures, namespaces, ?:).
 */

define('IMSIDECAR_DEFAULT_BOSH_URL', '/im/http-bind');

// The placeholder password inside dt__e. It is not a secret and grants
// nothing: imsidecar accepts any password for the session's own user and
// refuses every other user, whatever the password.
define('IMSIDECAR_PLACEHOLDER', 'imsidecar-session-cookie');

/*
 * imsidecar_messenger_allowed says whether a user in the groups
 * $memberships (Expresso's accounts->membership(): arrays with
 * 'account_name') may use the messenger, given the setting
 * groups_expresso_messenger: a serialized array of "label;groupname".
 */
function imsidecar_messenger_allowed($setting, $memberships)
{
    if (!is_string($setting) || $setting === '' || !is_array($memberships)) {
        return false;
    }
    if (version_compare(PHP_VERSION, '7.0.0', '>=')) {
        $entries = @unserialize($setting, array('allowed_classes' => false));
    } else {
        $entries = @unserialize($setting);
    }
    if (!is_array($entries)) {
        return false;
    }
    $groups = array();
    foreach ($entries as $entry) {
        if (!is_string($entry)) {
            continue;
        }
        $parts = explode(';', $entry);
        if (isset($parts[1]) && $parts[1] !== '') {
            $groups[$parts[1]] = true;
        }
    }
    foreach ($memberships as $group) {
        if (is_array($group) && isset($group['account_name']) && is_scalar($group['account_name'])
            && isset($groups[(string) $group['account_name']])) {
            return true;
        }
    }
    return false;
}

/*
 * imsidecar_plain_blob is dt__e: base64("jid NUL user NUL placeholder")
 * without its trailing "==". The 2.5 client appends "==" to whatever it
 * gets (Expresso's file stripped it), so the placeholder is lengthened
 * until the encoding ends in exactly "==": the client then sends strict
 * base64, whatever the lengths of the user and domain.
 */
function imsidecar_plain_blob($jid, $user)
{
    $placeholder = IMSIDECAR_PLACEHOLDER;
    while ((strlen($jid) + strlen($user) + strlen($placeholder) + 2) % 3 != 1) {
        $placeholder .= '-';
    }
    $blob = base64_encode($jid . "\0" . $user . "\0" . $placeholder);
    return substr($blob, 0, -2);
}

// imsidecar_utf8 returns $s as UTF-8: Expresso's session strings are
// ISO-8859-1, and json_encode refuses anything else.
function imsidecar_utf8($s)
{
    $s = (string) $s;
    if (preg_match('//u', $s)) {
        return $s;
    }
    $out = '';
    for ($i = 0, $n = strlen($s); $i < $n; $i++) {
        $c = ord($s[$i]);
        $out .= $c < 0x80 ? $s[$i] : chr(0xC0 | ($c >> 6)) . chr(0x80 | ($c & 0x3F));
    }
    return $out;
}

/*
 * imsidecar_messenger_answer is the whole answer, from the session
 * ($_SESSION), the permission, the Jabber domain and the BOSH URL.
 */
function imsidecar_messenger_answer($session, $allowed, $domain, $boshURL)
{
    $denied = array('error' => 'Not Permission');
    if (!$allowed || !is_array($session) || !isset($session['phpgw_info']['expressomail']['user'])) {
        return $denied;
    }
    $info = $session['phpgw_info']['expressomail'];
    $user = '';
    if (isset($info['user']['userid']) && is_string($info['user']['userid'])) {
        $user = $info['user']['userid'];
    } elseif (isset($info['user']['account_lid']) && is_string($info['user']['account_lid'])) {
        $user = $info['user']['account_lid'];
    }
    if ($user === '') {
        return $denied;
    }
    $org = '';
    if (isset($info['email_server']['organisationName']) && is_string($info['email_server']['organisationName'])) {
        $org = $info['email_server']['organisationName'];
    }
    // The resource Expresso used; imsidecar binds its own and tells the
    // client, which ignores it. Reduced to ASCII: json_encode would fail
    // on an ISO-8859-1 organisation name.
    $resource = 'JABBER_' . preg_replace('/[^A-Z0-9_]/', '_', strtoupper($org));
    $user = imsidecar_utf8($user);
    $domain = imsidecar_utf8($domain);
    if ($domain === '') {
        // The client then tells the user to call the administrator.
        $boshURL = '';
    }
    return array(
        'dt__a' => $resource,
        'dt__b' => $boshURL,
        'dt__c' => $domain,
        'dt__d' => $user,
        'dt__e' => imsidecar_plain_blob($user . '@' . $domain, $user),
    );
}

// imsidecar_bosh_url is where the browser reaches imsidecar's BOSH endpoint.
function imsidecar_bosh_url()
{
    if (isset($_SERVER['IMSIDECAR_BOSH_URL']) && $_SERVER['IMSIDECAR_BOSH_URL'] !== '') {
        return (string) $_SERVER['IMSIDECAR_BOSH_URL'];
    }
    $env = getenv('IMSIDECAR_BOSH_URL');
    if (is_string($env) && $env !== '') {
        return $env;
    }
    return IMSIDECAR_DEFAULT_BOSH_URL;
}

function imsidecar_send_json($answer)
{
    if (!headers_sent()) {
        header('Content-Type: application/json; charset=UTF-8');
        header('Cache-Control: no-store');
    }
    echo json_encode($answer);
}

// A test includes this file as a library, with this constant defined.
if (!defined('IMSIDECAR_AUTH_MESSENGER_LIBRARY')) {
    if (!isset($GLOBALS['phpgw_info'])) {
        // ExpressoMail is expressoMail1_2 on older trees, expressoMail after.
        $imsidecar_app = is_dir(dirname(__FILE__) . '/../../../expressoMail1_2') ? 'expressoMail1_2' : 'expressoMail';
        $GLOBALS['phpgw_info']['flags'] = array(
            'currentapp' => $imsidecar_app,
            'nonavbar' => true,
            'noheader' => true,
        );
    }
    require_once dirname(__FILE__) . '/../../../header.inc.php';

    if (session_id() == '' || !isset($_SESSION)) {
        imsidecar_send_json(array('error' => 'Not Permission'));
        exit;
    }
    $imsidecar_session = $_SESSION;
    // Nothing is written to the session: release its lock at once, so
    // that the page's other requests do not wait for this one.
    session_write_close();

    $imsidecar_server = isset($GLOBALS['phpgw_info']['server']) ? $GLOBALS['phpgw_info']['server'] : array();
    $imsidecar_allowed = imsidecar_messenger_allowed(
        isset($imsidecar_server['groups_expresso_messenger']) ? $imsidecar_server['groups_expresso_messenger'] : '',
        $GLOBALS['phpgw']->accounts->membership()
    );
    $imsidecar_domain = '';
    if ($imsidecar_allowed) {
        $imsidecar_config = CreateObject('phpgwapi.config', 'phpgwapi');
        $imsidecar_config->read_repository();
        if (isset($imsidecar_config->config_data['jabber_domain'])) {
            $imsidecar_domain = (string) $imsidecar_config->config_data['jabber_domain'];
        }
    }
    imsidecar_send_json(imsidecar_messenger_answer($imsidecar_session, $imsidecar_allowed, $imsidecar_domain, imsidecar_bosh_url()));
}
