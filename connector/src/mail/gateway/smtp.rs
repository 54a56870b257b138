//! The SMTP server side of the mail gateway (RFC 5321, the part a command mail needs): HELO/EHLO,
//! MAIL FROM (with SIZE), RCPT TO, DATA with dot-unstuffing, RSET, NOOP, VRFY, HELP, QUIT, and
//! STARTTLS with the connector's LAN certificate.
//!
//! A bad client cannot hold it: connections from outside `allow_from` are refused at the greeting,
//! at most `max_connections` are served at once (the rest get 421), every read waits at most
//! `idle_timeout` and a whole session lasts at most `session_timeout`, command lines are limited
//! to 512 octets and text lines to 1000 (RFC 5321 4.5.3.1), the message to `max_message_size`
//! (announced in EHLO's SIZE and enforced while reading), recipients to 20, and ten unknown
//! commands end the session. Unknown senders are refused at MAIL FROM. An accepted message goes
//! to the gateway through a bounded queue; when that is full the client is told to try later
//! (451), so nothing piles up in memory.

use super::Cidr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const MAX_COMMAND_LINE: usize = 512;
const MAX_TEXT_LINE: usize = 1000;
const MAX_RECIPIENTS: usize = 20;
const MAX_ERRORS: u32 = 10;

/// The server's limits and identity.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The name in the greeting and in EHLO.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    pub allow_from: Vec<Cidr>,
    /// Refuse MAIL FROM until STARTTLS has been done.
    pub require_tls: bool,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub peer: SocketAddr,
    /// Whether it came over TLS (STARTTLS).
    pub tls: bool,
    /// The reverse-path of MAIL FROM, lower case.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, lines ending in CRLF.
    pub data: Vec<u8>,
}

/// What the server asks of the gateway.
pub trait Policy: Send + Sync + 'static {
    /// Whether mail from this address is taken at all (checked at MAIL FROM).
    fn known_sender(&self, address: &str) -> bool;
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Accepts connections until `shutdown`.
pub fn serve(
    listener: TcpListener,
    settings: Settings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: Arc<dyn Policy>,
    queue: tokio::sync::mpsc::Sender<Envelope>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let settings = Arc::new(settings);
    let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // E.g. out of file descriptors: do not spin.
                        tracing::warn!(error = %e, "mail gateway: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let mut stream = stream;
            if !settings.allow_from.iter().any(|c| c.contains(peer.ip())) {
                tracing::warn!(%peer, reason = "source address outside mail_commands.allow_from", "mail command connection refused");
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    stream.write_all(b"554 5.7.1 Not accepted from your address\r\n"),
                )
                .await;
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "mail gateway: too many connections; refused");
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    stream.write_all(b"421 4.3.2 Too many connections, try again later\r\n"),
                )
                .await;
                continue;
            };
            let (settings, tls, policy, queue, stop) =
                (settings.clone(), tls.clone(), policy.clone(), queue.clone(), shutdown.clone());
            tokio::spawn(async move {
                let session =
                    Session { settings: &settings, tls, policy: policy.as_ref(), queue: &queue, peer };
                let limit = settings.session_timeout;
                let boxed: Box<dyn Stream> = Box::new(stream);
                tokio::select! {
                    r = tokio::time::timeout(limit, session.run(boxed)) => {
                        if r.is_err() {
                            tracing::info!(%peer, "mail gateway: session time limit reached; closed");
                        }
                    }
                    _ = stop.cancelled() => {}
                }
                drop(slot);
            });
        }
    })
}

struct Session<'a> {
    settings: &'a Settings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    policy: &'a dyn Policy,
    queue: &'a tokio::sync::mpsc::Sender<Envelope>,
    peer: SocketAddr,
}

/// A line as read.
enum Line {
    Text(Vec<u8>),
    /// Longer than allowed; the rest of it was read and dropped.
    TooLong,
    Eof,
}

#[derive(Debug)]
enum End {
    Closed,
    Idle,
}

/// Reads one line of at most `max` octets (CRLF included), waiting at most `idle`.
async fn read_line(r: &mut BufReader<Box<dyn Stream>>, max: usize, idle: Duration) -> Result<Line, End> {
    let read = async {
        let mut buf = Vec::new();
        let n = (&mut *r).take(max as u64).read_until(b'\n', &mut buf).await.map_err(|_| End::Closed)?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if buf.last() == Some(&b'\n') {
            return Ok(Line::Text(buf));
        }
        if n < max {
            // The peer closed in the middle of a line.
            return Ok(Line::Eof);
        }
        // Over the limit: drop the rest of the line, in bounded pieces.
        loop {
            let mut rest = Vec::new();
            let n = (&mut *r).take(64 * 1024).read_until(b'\n', &mut rest).await.map_err(|_| End::Closed)?;
            if n == 0 {
                return Ok(Line::Eof);
            }
            if rest.last() == Some(&b'\n') {
                return Ok(Line::TooLong);
            }
        }
    };
    tokio::time::timeout(idle, read).await.map_err(|_| End::Idle)?
}

async fn reply(r: &mut BufReader<Box<dyn Stream>>, text: &str) -> Result<(), End> {
    let w = r.get_mut();
    w.write_all(text.as_bytes()).await.map_err(|_| End::Closed)?;
    w.write_all(b"\r\n").await.map_err(|_| End::Closed)?;
    w.flush().await.map_err(|_| End::Closed)
}

/// `<address>` with optional parameters after it, from `FROM:<a> SIZE=1` or `TO:<a>`.
fn path_and_params<'a>(arg: &'a str, prefix: &str) -> Option<(String, Vec<&'a str>)> {
    let rest =
        arg.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).map(|_| &arg[prefix.len()..])?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].trim().to_ascii_lowercase();
    Some((path, rest[end + 1..].split_whitespace().collect()))
}

impl Session<'_> {
    async fn run(self, stream: Box<dyn Stream>) {
        let peer = self.peer;
        match self.converse(stream).await {
            Ok(()) | Err(End::Closed) => {}
            Err(End::Idle) => tracing::info!(%peer, "mail gateway: client idle too long; closed"),
        }
    }

    async fn converse(&self, stream: Box<dyn Stream>) -> Result<(), End> {
        let s = self.settings;
        let mut r = BufReader::new(stream);
        let mut tls = false;
        let mut greeted = false;
        let mut from: Option<String> = None;
        let mut rcpts: Vec<String> = Vec::new();
        let mut errors = 0u32;
        reply(&mut r, &format!("220 {} Outpost mail commands ESMTP", s.hostname)).await?;
        loop {
            let line = match read_line(&mut r, MAX_COMMAND_LINE, s.idle_timeout).await? {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    errors += 1;
                    reply(&mut r, "500 5.5.2 Line too long").await?;
                    continue;
                }
                Line::Text(t) => t,
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
            let verb = verb.to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" | "HELO" => {
                    if arg.trim().is_empty() {
                        reply(&mut r, "501 5.5.4 Give your host name").await?;
                        continue;
                    }
                    greeted = true;
                    from = None;
                    rcpts.clear();
                    if verb == "HELO" {
                        reply(&mut r, &format!("250 {}", s.hostname)).await?;
                    } else {
                        let mut lines = vec![
                            s.hostname.clone(),
                            format!("SIZE {}", s.max_message_size),
                            "8BITMIME".into(),
                        ];
                        if self.tls.is_some() && !tls {
                            lines.push("STARTTLS".into());
                        }
                        lines.push("HELP".into());
                        let last = lines.len() - 1;
                        let mut out = String::new();
                        for (i, l) in lines.iter().enumerate() {
                            out.push_str(&format!("250{}{l}", if i == last { ' ' } else { '-' }));
                            if i != last {
                                out.push_str("\r\n");
                            }
                        }
                        reply(&mut r, &out).await?;
                    }
                }
                "STARTTLS" => {
                    let Some(acceptor) = self.tls.clone().filter(|_| !tls) else {
                        reply(&mut r, "503 5.5.1 TLS not available or already active").await?;
                        continue;
                    };
                    // Anything the client sent after STARTTLS in the clear must not be taken as
                    // if it came over TLS (the STARTTLS command injection).
                    if !r.buffer().is_empty() {
                        reply(&mut r, "501 5.5.1 Nothing may follow STARTTLS before the handshake").await?;
                        return Ok(());
                    }
                    reply(&mut r, "220 2.0.0 Ready to start TLS").await?;
                    let inner = r.into_inner();
                    let stream = tokio::time::timeout(s.idle_timeout, acceptor.accept(inner))
                        .await
                        .map_err(|_| End::Idle)?
                        .map_err(|e| {
                            tracing::info!(peer = %self.peer, error = %e, "mail gateway: TLS handshake failed");
                            End::Closed
                        })?;
                    r = BufReader::new(Box::new(stream));
                    tls = true;
                    // RFC 3207: everything known before TLS is forgotten.
                    greeted = false;
                    from = None;
                    rcpts.clear();
                }
                "MAIL" => {
                    if !greeted {
                        reply(&mut r, "503 5.5.1 Say EHLO first").await?;
                        continue;
                    }
                    if from.is_some() {
                        reply(&mut r, "503 5.5.1 Sender already given").await?;
                        continue;
                    }
                    if s.require_tls && !tls {
                        tracing::warn!(peer = %self.peer, reason = "no TLS", "mail command refused");
                        reply(&mut r, "530 5.7.0 Must issue a STARTTLS command first").await?;
                        continue;
                    }
                    let Some((path, params)) = path_and_params(arg, "FROM:") else {
                        reply(&mut r, "501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                        continue;
                    };
                    let mut bad = None;
                    for p in params {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        match k.to_ascii_uppercase().as_str() {
                            "SIZE" => match v.parse::<usize>() {
                                Ok(n) if n > s.max_message_size => {
                                    bad = Some(format!(
                                        "552 5.3.4 Message too big: at most {} bytes",
                                        s.max_message_size
                                    ))
                                }
                                Ok(_) => {}
                                Err(_) => bad = Some("501 5.5.4 Bad SIZE".into()),
                            },
                            "BODY" => {}
                            _ => bad = Some(format!("555 5.5.4 Parameter {k} not supported")),
                        }
                    }
                    if let Some(b) = bad {
                        reply(&mut r, &b).await?;
                        continue;
                    }
                    if path.is_empty() || !self.policy.known_sender(&path) {
                        tracing::warn!(peer = %self.peer, sender = %path, reason = "unknown sender", "mail command refused");
                        reply(&mut r, "550 5.7.1 Sender not allowed to send commands").await?;
                        continue;
                    }
                    from = Some(path);
                    reply(&mut r, "250 2.1.0 OK").await?;
                }
                "RCPT" => {
                    if from.is_none() {
                        reply(&mut r, "503 5.5.1 MAIL first").await?;
                        continue;
                    }
                    let Some((path, _)) = path_and_params(arg, "TO:") else {
                        reply(&mut r, "501 5.5.4 Syntax: RCPT TO:<address>").await?;
                        continue;
                    };
                    if rcpts.len() >= MAX_RECIPIENTS {
                        reply(&mut r, "452 4.5.3 Too many recipients").await?;
                        continue;
                    }
                    rcpts.push(path);
                    reply(&mut r, "250 2.1.5 OK").await?;
                }
                "DATA" => {
                    let Some(sender) = from.clone().filter(|_| !rcpts.is_empty()) else {
                        reply(&mut r, "503 5.5.1 MAIL and RCPT first").await?;
                        continue;
                    };
                    reply(&mut r, "354 End data with <CR><LF>.<CR><LF>").await?;
                    let answer = match self.data(&mut r).await? {
                        Ok(data) => {
                            let env = Envelope {
                                peer: self.peer,
                                tls,
                                mail_from: sender,
                                rcpt_to: std::mem::take(&mut rcpts),
                                data,
                            };
                            match self.queue.try_send(env) {
                                Ok(()) => "250 2.0.0 Accepted".to_string(),
                                Err(_) => {
                                    tracing::warn!(peer = %self.peer, "mail gateway: queue full; client told to retry");
                                    "451 4.3.0 Busy, try again later".to_string()
                                }
                            }
                        }
                        Err(refusal) => refusal,
                    };
                    from = None;
                    rcpts.clear();
                    reply(&mut r, &answer).await?;
                }
                "RSET" => {
                    from = None;
                    rcpts.clear();
                    reply(&mut r, "250 2.0.0 OK").await?;
                }
                "NOOP" => reply(&mut r, "250 2.0.0 OK").await?,
                "VRFY" => reply(&mut r, "252 2.5.0 Cannot verify").await?,
                "HELP" => {
                    reply(
                        &mut r,
                        "214 2.0.0 Subject: STATUS [machine] CODE, or RELAY machine card relay ON|OFF CODE",
                    )
                    .await?
                }
                "QUIT" => {
                    reply(&mut r, "221 2.0.0 Bye").await?;
                    return Ok(());
                }
                _ => {
                    errors += 1;
                    reply(&mut r, "500 5.5.2 Command not recognised").await?;
                }
            }
            if errors >= MAX_ERRORS {
                reply(&mut r, "421 4.7.0 Too many errors").await?;
                return Ok(());
            }
        }
    }

    /// Reads the message after 354 up to the lone dot. The inner result is the message, or the
    /// refusal to answer once the end was read (too big, a line too long).
    async fn data(&self, r: &mut BufReader<Box<dyn Stream>>) -> Result<Result<Vec<u8>, String>, End> {
        let s = self.settings;
        let mut data = Vec::new();
        let mut too_big = false;
        let mut too_long = false;
        loop {
            let line = match read_line(r, MAX_TEXT_LINE, s.idle_timeout).await? {
                Line::Eof => return Err(End::Closed),
                Line::TooLong => {
                    too_long = true;
                    continue;
                }
                Line::Text(t) => t,
            };
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            // Dot-unstuffing: a leading dot was doubled by the client.
            let line = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + line.len() > s.max_message_size {
                too_big = true;
            }
            if !too_big {
                data.extend_from_slice(line);
            }
        }
        if too_big {
            tracing::warn!(peer = %self.peer, reason = "message too big", "mail command refused");
            return Ok(Err(format!("552 5.3.4 Message too big: at most {} bytes", s.max_message_size)));
        }
        if too_long {
            tracing::warn!(peer = %self.peer, reason = "line too long", "mail command refused");
            return Ok(Err("500 5.5.6 A line is longer than 1000 octets".into()));
        }
        Ok(Ok(data))
    }
}
