"""The portal's few emails (an unlock link, a sign-up attempt on a taken address), sent over SMTP.

``PORTAL_SMTP_URL`` names the server: ``smtp://host:port`` (plain), ``smtp+starttls://host:587`` or
``smtps://host:465``, with ``user:password@`` when it asks for a login. Unset, nothing is sent (logged at
debug). Mail goes out on a thread of its own: a request never waits on the mail server, so its answer is
neither slowed nor timed by whether an email was sent.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from portal.config import Settings

logger = logging.getLogger(__name__)
SMTP_TIMEOUT_S = 10
_DEFAULT_PORTS = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mail")


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


def is_configured(settings: Settings) -> bool:
    return bool(settings.smtp_url)


def sender_address(settings: Settings) -> str:
    return settings.mail_from or f"GPU Portal <portal@{urlsplit(settings.base_url).hostname or 'localhost'}>"


def send(settings: Settings, mail: Mail) -> bool:
    """Send one email now; False (and a warning, never an exception) when it could not be sent."""
    if not settings.smtp_url:
        logger.debug("no PORTAL_SMTP_URL: email %r not sent", mail.subject)
        return False
    url = urlsplit(settings.smtp_url)
    message = EmailMessage()
    try:
        message["From"] = sender_address(settings)
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        port = url.port or _DEFAULT_PORTS[url.scheme]
        host = url.hostname or "localhost"
        if url.scheme == "smtps":
            server: smtplib.SMTP = smtplib.SMTP_SSL(
                host, port, timeout=SMTP_TIMEOUT_S, context=ssl.create_default_context()
            )
        else:
            server = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_S)
        with server:
            if url.scheme == "smtp+starttls":
                server.starttls(context=ssl.create_default_context())
            if url.username:
                server.login(unquote(url.username), unquote(url.password or ""))
            server.send_message(message)
    except (OSError, smtplib.SMTPException, ValueError) as error:
        # The URL may hold a password: name the host only.
        logger.warning("email %r not sent via %s: %s", mail.subject, url.hostname, error)
        return False
    return True


def send_later(settings: Settings, mail: Mail) -> Future[bool] | None:
    """Send on the mail thread; the future says whether it went. None when no server is configured."""
    if not is_configured(settings):
        logger.debug("no PORTAL_SMTP_URL: email %r not sent", mail.subject)
        return None
    return _sender.submit(send, settings, mail)
