//! SMTP delivery: one conversation per mail (alerts are rare; a pool would only hold idle links).
//!
//! Security rules, enforced here and not left to the config's goodwill:
//! - port 465 / `tls = "smtps"`: TLS from the first byte;
//! - any other port / `tls = "starttls"`: STARTTLS is required; a server that does not offer it
//!   gets neither the mail nor the password (lettre's `Tls::Required` stops before AUTH);
//! - `tls = "none"` only when written in the config;
//! - the certificate is checked against `ca_file` or the system roots, host name included.

use super::config::{MailConfig, TlsMode};
use super::error::{SendError, SetupError};
use super::Mail;
use crate::keys::{is_sealed, unseal, KeyPair};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::future::Future;
use std::time::Duration;

/// Something that delivers a [`Mail`]: the real [`SmtpTransport`], or a fake in unit tests.
pub trait Transport: Send + Sync + 'static {
    /// Delivers `mail`; `Ok` means the server accepted it (250 after DATA). `message_id` is the
    /// stable `Message-ID` (without angle brackets), the same on every retry of the same mail.
    fn send(&self, mail: &Mail, message_id: &str) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// The SMTP client built from a [`MailConfig`].
#[derive(Clone)]
pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    server: String,
    mode: TlsMode,
    timeout: Duration,
}

impl std::fmt::Debug for SmtpTransport {
    // lettre's own Debug would print the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTransport")
            .field("server", &self.server)
            .field("mode", &self.mode)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpTransport {
    /// Builds the client. `key` opens a sealed `mail.password`; it may be `None` when the password
    /// is in clear or absent. Loads the trust roots now, so a bad `ca_file` is reported at start.
    pub fn new(cfg: &MailConfig, key: Option<&KeyPair>) -> Result<SmtpTransport, SetupError> {
        crate::install_crypto_provider();
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| SetupError::Invalid { key: "from", message: format!("not a mail address: {e}") })?;
        let mode = cfg.tls_mode();
        let tls = match mode {
            TlsMode::None => Tls::None,
            TlsMode::Smtps => Tls::Wrapper(tls_parameters(cfg)?),
            TlsMode::Starttls => Tls::Required(tls_parameters(cfg)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.server.as_str())
            .port(cfg.port)
            .timeout(Some(cfg.timeout))
            .tls(tls);
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            let secret = if is_sealed(password) {
                unseal(key.ok_or(SetupError::SealedWithoutKey)?, password)?
            } else {
                crate::keys::Secret::new(password.clone())
            };
            builder = builder
                .credentials(Credentials::new(user.clone(), secret.expose().to_string()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(SmtpTransport {
            inner: builder.build(),
            from,
            server: cfg.server.clone(),
            mode,
            timeout: cfg.timeout,
        })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }
}

fn tls_parameters(cfg: &MailConfig) -> Result<TlsParameters, SetupError> {
    let certs = match &cfg.ca_file {
        Some(path) => crate::tls::load_certs(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(SetupError::Roots(crate::tls::TlsError::Roots(format!(
                    "the system trust store is empty or unreadable ({:?}); set mail.ca_file",
                    found.errors
                ))));
            }
            found.certs
        }
    };
    // Only the roots loaded here: lettre's own store (webpki bundle or none) is switched off so the
    // trust decision is the same as for every other Outpost link.
    let mut b = TlsParameters::builder(cfg.server.clone()).certificate_store(CertificateStore::None);
    for c in certs {
        let cert = Certificate::from_der(c.to_vec())
            .map_err(|e| SetupError::Invalid { key: "ca_file", message: e.to_string() })?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls().map_err(|e| SetupError::Invalid { key: "ca_file", message: e.to_string() })
}

impl Transport for SmtpTransport {
    async fn send(&self, mail: &Mail, message_id: &str) -> Result<(), SendError> {
        let message = build_message(&self.from, mail, message_id)?;
        // lettre's timeout covers each step; this bounds the whole conversation too.
        let total = self.timeout.saturating_mul(3);
        match tokio::time::timeout(total, self.inner.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&self.server, &e, self.timeout)),
            Err(_) => Err(SendError::Timeout { server: self.server.clone(), seconds: total.as_secs() }),
        }
    }
}

/// The MIME message: text alone, or multipart/alternative (text + HTML), wrapped in
/// multipart/mixed when there are attachments.
pub(crate) fn build_message(from: &Mailbox, mail: &Mail, message_id: &str) -> Result<Message, SendError> {
    let bad = |m: String| SendError::Message(m);
    if mail.to.is_empty() {
        return Err(bad("no recipients".into()));
    }
    let mut b = Message::builder()
        .from(from.clone())
        .subject(mail.subject.clone())
        .message_id(Some(format!("<{message_id}>")))
        .date_now();
    for to in &mail.to {
        b = b.to(to.parse::<Mailbox>().map_err(|e| bad(format!("recipient `{to}`: {e}")))?);
    }
    let body = match &mail.html {
        Some(html) => Body::Multi(MultiPart::alternative_plain_html(mail.text.clone(), html.clone())),
        None => Body::Single(SinglePart::plain(mail.text.clone())),
    };
    let message = if mail.attachments.is_empty() {
        match body {
            Body::Multi(m) => b.multipart(m),
            Body::Single(s) => b.singlepart(s),
        }
    } else {
        let mut mixed = match body {
            Body::Multi(m) => MultiPart::mixed().multipart(m),
            Body::Single(s) => MultiPart::mixed().singlepart(s),
        };
        for a in &mail.attachments {
            let ct = ContentType::parse(&a.content_type)
                .map_err(|e| bad(format!("attachment {}: content type: {e}", a.filename)))?;
            mixed = mixed
                .singlepart(lettre::message::Attachment::new(a.filename.clone()).body(a.data.clone(), ct));
        }
        b.multipart(mixed)
    };
    message.map_err(|e| bad(e.to_string()))
}

enum Body {
    Single(SinglePart),
    Multi(MultiPart),
}

/// Turns lettre's error into one that names the cause.
fn classify(server: &str, e: &lettre::transport::smtp::Error, timeout: Duration) -> SendError {
    let server = server.to_string();
    if let Some(r) = find_rustls(e) {
        use rustls::CertificateError as C;
        return match r {
            rustls::Error::InvalidCertificate(c) => match c {
                // BadSignature: an authority of the same name is trusted, but it did not sign this.
                C::UnknownIssuer | C::BadSignature => SendError::UnknownCa { server },
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    SendError::WrongHost { server, detail: c.to_string() }
                }
                C::Expired | C::ExpiredContext { .. } => SendError::Expired { server },
                C::NotValidYet | C::NotValidYetContext { .. } => SendError::NotYetValid { server },
                other => SendError::BadCertificate { server, detail: other.to_string() },
            },
            other => SendError::Tls { server, detail: other.to_string() },
        };
    }
    let text = e.to_string();
    if text.contains("STARTTLS is not supported") {
        return SendError::NoStartTls { server };
    }
    if text.contains("authentication mechanism") {
        return SendError::Auth { server, detail: "the server offers no AUTH PLAIN or LOGIN".into() };
    }
    if e.is_timeout() {
        return SendError::Timeout { server, seconds: timeout.as_secs() };
    }
    if let Some(code) = e.status() {
        // 530/534/535/538: the login (or its precondition) was refused, not this mail.
        let c = code.to_string();
        if ["530", "534", "535", "538"].contains(&c.as_str()) {
            return SendError::Auth { server, detail: text };
        }
        return if e.is_permanent() {
            SendError::Rejected { server, detail: text }
        } else {
            SendError::Deferred { server, detail: text }
        };
    }
    if e.is_tls() {
        return SendError::Tls { server, detail: text };
    }
    SendError::Connect { server, detail: text }
}

fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error::source() skips the wrapped error itself; look inside explicitly.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}
