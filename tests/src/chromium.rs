//! Headless Chromium (Debian's `chromium` package) as a test harness for pages Baton
//! writes: a screenshot to look at, and the DOM as the browser built it to assert on.
//!
//! Each run gets a fresh profile directory and no network-facing background services,
//! and is killed (its whole process group) when it overruns [`TIMEOUT`].

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The browser, as Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The window, hence the screenshot, in CSS pixels.
pub const WINDOW: (u32, u32) = (1400, 1800);
/// How long one browser run may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether [`CHROMIUM`] is installed (`apt-get install chromium`).
pub fn available() -> bool {
    Path::new(CHROMIUM).is_file()
}

/// Loads `html_path` in headless Chromium, saves a [`WINDOW`]-sized screenshot to
/// `png_out`, and returns the DOM after loading, serialized (`--dump-dom`).
pub fn render(html_path: &Path, png_out: &Path) -> io::Result<String> {
    let url = file_url(html_path)?;
    let mut screenshot = std::ffi::OsString::from("--screenshot=");
    screenshot.push(png_out);
    run(&[screenshot.as_os_str(), url.as_ref()])?;
    if !png_out.is_file() {
        return Err(io::Error::other(format!(
            "chromium wrote no screenshot to {}",
            png_out.display()
        )));
    }
    let dom = run(&["--dump-dom".as_ref(), url.as_ref()])?;
    String::from_utf8(dom).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Width and height from a PNG's `IHDR` chunk, and the file's size in bytes.
pub fn png_stats(png: &Path) -> io::Result<(u32, u32, u64)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let bytes = std::fs::read(png)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a PNG file");
    // Signature, then the first chunk: length (4), type `IHDR` (4), width, height.
    if !bytes.starts_with(SIGNATURE) || bytes.get(12..16) != Some(b"IHDR") {
        return Err(bad());
    }
    let be = |at: usize| -> io::Result<u32> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        Ok(u32::from_be_bytes(b))
    };
    Ok((be(16)?, be(20)?, bytes.len() as u64))
}

/// `file://` URL of `path` made absolute, with every byte outside the unreserved set
/// and `/` percent-encoded.
fn file_url(path: &Path) -> io::Result<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::path::absolute(path)?;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(url)
}

/// One headless run with `extra` arguments after the common ones; its stdout.
fn run(extra: &[&std::ffi::OsStr]) -> io::Result<Vec<u8>> {
    let profile = tempfile::tempdir()?;
    let mut user_data = std::ffi::OsString::from("--user-data-dir=");
    user_data.push(profile.path());
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(user_data)
    .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a timeout ends the renderer and helper processes too.
    .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {CHROMIUM} (apt-get install chromium): {e}"),
        )
    })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_or_kill(&mut child)?;
    // Helpers that outlive the browser would hold the pipes open.
    kill_group(&child);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => Err(io::Error::other(format!(
            "chromium {extra:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr)
        ))),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "chromium {extra:?} took more than {TIMEOUT:?} and was killed: {}",
                String::from_utf8_lossy(&stderr)
            ),
        )),
    }
}

/// Reads a pipe to its end on a thread of its own, so a chatty child never blocks.
fn drain(pipe: Option<impl io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// The child's exit status, or `None` when it overran [`TIMEOUT`] and its process
/// group was killed.
fn wait_or_kill(child: &mut Child) -> io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            kill_group(child);
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills what is left of `child`'s process group (its id is the child's pid:
/// `process_group(0)`); nothing when the group is gone.
fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status();
}
