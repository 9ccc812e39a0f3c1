<?php

declare(strict_types=1);

namespace Expresso\ImSidecar\Exception;

/**
 * HTTP 502 xmpp_unavailable or xmpp_auth_failed: the Jabber server is unreachable or refused the user's credentials. After xmpp_auth_failed the sidecar does not retry until the PHP session changes.
 */
final class XmppException extends ApiException
{
}
