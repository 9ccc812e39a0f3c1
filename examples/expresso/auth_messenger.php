<?php
/*
 * Drop-in replacement for Expresso Livre 2.5's
 * prototype/plugins/messenger/auth_messenger.php, for sites whose messenger
 * goes through imsidecar (docs/EXPRESSO.md).
 *
 * Expresso's own file hands the browser a ready SASL PLAIN blob with the
 * user's password in it. This one answers the same JSON, with the same
 * group check, but:
 *   - dt__b is the sidecar's BOSH URL, same origin (IMSIDECAR_BOSH_URL
 *     below, e.g. /im/http-bind, proxied by Apache to the sidecar);
 *   - dt__e carries a placeholder instead of the password. The sidecar
 *     accepts a PLAIN authentication as the session's own user on the
 *     strength of the session cookie the request carries, and ignores the
 *     password inside. (dt__e must not be empty: the messenger would then
 *     fall back to a bind.php that does not exist.)
 * The browser never sees the password, and the page reuses the one XMPP
 * stream the sidecar keeps for this PHP session: no presence flap on page
 * loads.
 *
 * Written for PHP 5.3 to 8.x, like the rest of Expresso 2.5.
 */

// The sidecar's BOSH endpoint as the browser reaches it (same host as
// Expresso). Leave jabber_url_1 in the Expresso setup as it is, or point
// it here too: this file does not read it.
if (!defined('IMSIDECAR_BOSH_URL')) {
    define('IMSIDECAR_BOSH_URL', '/im/http-bind');
}

if (!isset($GLOBALS['phpgw_info'])) {
    $GLOBALS['phpgw_info']['flags'] = array(
        'currentapp' => 'expressoMail',
        'nonavbar'   => true,
        'noheader'   => true,
    );
}
require_once dirname(__FILE__) . '/../../../header.inc.php';

header('Content-Type: application/json; charset=utf-8');
header('Cache-Control: no-store');

/**
 * Is the user in one of the groups allowed to use the messenger? The
 * setting is a serialized list of "gid;name" strings.
 */
function imsidecar_messenger_allowed()
{
    $setting = isset($GLOBALS['phpgw_info']['server']['groups_expresso_messenger'])
        ? $GLOBALS['phpgw_info']['server']['groups_expresso_messenger'] : '';
    if ($setting == '') {
        return false;
    }
    $groups = @unserialize($setting);
    if (!is_array($groups)) {
        return false;
    }
    $allowed = array();
    foreach ($groups as $entry) {
        $parts = explode(';', (string) $entry);
        if (isset($parts[1])) {
            $allowed[$parts[1]] = true;
        }
    }
    foreach ($GLOBALS['phpgw']->accounts->membership() as $group) {
        if (isset($group['account_name']) && isset($allowed[$group['account_name']])) {
            return true;
        }
    }
    return false;
}

if (!session_id() || !isset($_SESSION['phpgw_info']['expressomail']['user']['userid'])) {
    echo json_encode(array('error' => 'Not Permission'));
    exit;
}
if (!imsidecar_messenger_allowed()) {
    echo json_encode(array('error' => 'Not Permission'));
    exit;
}

$config = CreateObject('phpgwapi.config', 'phpgwapi');
$config->read_repository();
$domain = $config->config_data['jabber_domain'];
$user = $_SESSION['phpgw_info']['expressomail']['user']['userid'];
$org = isset($_SESSION['phpgw_info']['expressomail']['email_server']['organisationName'])
    ? $_SESSION['phpgw_info']['expressomail']['email_server']['organisationName'] : '';

// SASL PLAIN with an empty authorization and authentication identity
// (which the sidecar reads as "the session's own user") and a placeholder
// password, without the padding the messenger adds back itself.
$blob = rtrim(base64_encode("\0\0imsidecar"), '=');

echo json_encode(array(
    'dt__a' => 'JABBER_' . strtoupper($org),
    'dt__b' => IMSIDECAR_BOSH_URL,
    'dt__c' => $domain,
    'dt__d' => $user,
    'dt__e' => $blob,
));
