//! cloud-hypervisor's REST API (`--api-socket`): HTTP/1.1 over a unix
//! socket, one request per connection, as `ch-remote` does it.
//!
//! Written here rather than taken from a crate: the HTTP clients on the
//! registry either do not speak over unix sockets or bring an async runtime,
//! and gmemctl needs four requests with a bounded wait
//! (cloud-hypervisor's own `api_client` is not published).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Largest response read (a `vm.info` is a few KiB).
const MAX_RESPONSE: u64 = 1 << 20;

/// Errors of an API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Connecting, writing or reading failed.
    #[error("cloud-hypervisor API at {path}: {what}")]
    Io {
        /// The API socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("cloud-hypervisor API at {path}: malformed response to {endpoint}")]
    Malformed {
        /// The API socket.
        path: PathBuf,
        /// The request.
        endpoint: String,
    },
    /// cloud-hypervisor refused the request.
    #[error("cloud-hypervisor refused {endpoint} ({status}): {body}")]
    Refused {
        /// The request.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
}

/// A cloud-hypervisor API socket.
#[derive(Debug, Clone)]
pub struct ChApi {
    path: PathBuf,
    timeout: Duration,
}

impl ChApi {
    /// The API at `path`; every request is bounded by `timeout`.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        ChApi {
            path: path.to_owned(),
            timeout,
        }
    }

    /// `GET /api/v1/vm.info`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn info(&self) -> Result<Value, ApiError> {
        let body = self.request("GET", "vm.info", None)?;
        serde_json::from_str(&body).map_err(|_| self.malformed("vm.info"))
    }

    /// The VM's state from `vm.info` (`Running`, `Paused`, …).
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn state(&self) -> Result<String, ApiError> {
        let info = self.info()?;
        info["state"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.malformed("vm.info"))
    }

    /// `GET /api/v1/vmm.ping`: answers once the API serves.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn ping(&self) -> Result<(), ApiError> {
        self.request("GET", "vmm.ping", None).map(drop)
    }

    /// `PUT /api/v1/vm.receive-migration`: listen on unix socket `url`.
    /// cloud-hypervisor answers at once and receives in the background.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn receive_migration(&self, socket: &Path) -> Result<(), ApiError> {
        let body = serde_json::json!({ "receiver_url": unix_url(socket) });
        self.request("PUT", "vm.receive-migration", Some(&body.to_string()))
            .map(drop)
    }

    /// `PUT /api/v1/vm.send-migration` to unix socket `socket`; `local`
    /// hands RAM over as fds instead of copying it, and then
    /// `preserve_source` keeps the VM here, paused, instead of ending the
    /// process. cloud-hypervisor answers once its migration worker started.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn send_migration(
        &self,
        socket: &Path,
        local: bool,
        preserve_source: bool,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({
            "destination_url": unix_url(socket),
            "local": local,
            "preserve_source": preserve_source,
        });
        self.request("PUT", "vm.send-migration", Some(&body.to_string()))
            .map(drop)
    }

    /// `PUT /api/v1/vm.resume`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn resume(&self) -> Result<(), ApiError> {
        self.request("PUT", "vm.resume", None).map(drop)
    }

    /// `PUT /api/v1/vmm.shutdown`: the process exits.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn shutdown_vmm(&self) -> Result<(), ApiError> {
        self.request("PUT", "vmm.shutdown", None).map(drop)
    }

    /// One request; returns the body of a 2xx answer.
    fn request(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&str>,
    ) -> Result<String, ApiError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| ApiError::Io { path, what, source }
        };
        let mut stream = UnixStream::connect(&self.path).map_err(io("cannot connect"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(io("cannot set a timeout"))?;
        let body = body.unwrap_or("");
        let mut request = format!("{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\n");
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream
            .write_all(request.as_bytes())
            .map_err(io("cannot send a request"))?;
        let response = read_response(&mut stream)
            .map_err(io("no complete answer"))?
            .ok_or_else(|| self.malformed(endpoint))?;
        if (200..300).contains(&response.status) {
            Ok(response.body)
        } else {
            Err(ApiError::Refused {
                endpoint: endpoint.to_owned(),
                status: response.status,
                body: response.body.trim().to_owned(),
            })
        }
    }

    fn malformed(&self, endpoint: &str) -> ApiError {
        ApiError::Malformed {
            path: self.path.clone(),
            endpoint: endpoint.to_owned(),
        }
    }
}

fn unix_url(socket: &Path) -> String {
    format!("unix:{}", socket.display())
}

/// A parsed HTTP response.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    body: String,
}

/// Reads one response: the head up to the blank line, then
/// `Content-Length` bytes of body (none without the header). `None` if it
/// is not HTTP.
fn read_response(stream: &mut impl Read) -> std::io::Result<Option<Response>> {
    let mut reader = stream.take(MAX_RESPONSE);
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: the head is small, and nothing past it may be consumed.
    while !raw.ends_with(b"\r\n\r\n") {
        if reader.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.push(byte[0]);
    }
    let Ok(head) = std::str::from_utf8(&raw) else {
        return Ok(None);
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Ok(None);
    };
    let mut length = 0u64;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                match value.trim().parse() {
                    Ok(n) => length = n,
                    Err(_) => return Ok(None),
                }
            }
        }
    }
    let mut body = Vec::new();
    reader.take(length).read_to_end(&mut body)?;
    if (body.len() as u64) < length {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn responses_parse_with_and_without_a_body() {
        let ok = b"HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nContent-Length: 13\r\n\r\n{\"state\":\"x\"}tail";
        let r = read_response(&mut Cursor::new(&ok[..])).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{\"state\":\"x\"}"));
        let empty = b"HTTP/1.0 204 No Content\r\n\r\n";
        let r = read_response(&mut Cursor::new(&empty[..]))
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
    }

    #[test]
    fn broken_responses_are_errors() {
        for bad in [&b"SSH-2.0\r\n\r\n"[..], b"HTTP/1.1 abc\r\n\r\n"] {
            assert!(read_response(&mut Cursor::new(bad)).unwrap().is_none());
        }
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        assert!(read_response(&mut Cursor::new(&cut[..])).is_err());
        assert!(read_response(&mut Cursor::new(&b"HTTP/1.1 200"[..])).is_err());
    }

    #[test]
    fn refusals_carry_cloud_hypervisors_explanation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 512];
            let n = s.read(&mut head).unwrap();
            let text = String::from_utf8_lossy(&head[..n]).into_owned();
            s.write_all(b"HTTP/1.1 500 \r\nContent-Length: 14\r\n\r\nVM not created")
                .unwrap();
            text
        });
        let api = ChApi::new(&path, Duration::from_secs(5));
        let err = api
            .send_migration(Path::new("/run/m.sock"), true, true)
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Refused { status: 500, body, .. } if body == "VM not created"),
            "{err}"
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("PUT /api/v1/vm.send-migration HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with(
                "{\"destination_url\":\"unix:/run/m.sock\",\"local\":true,\"preserve_source\":true}"
            ),
            "{request}"
        );
    }
}
