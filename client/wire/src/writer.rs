//! Frames queued for one socket and written in the order they were queued. A caller that goes
//! away (a timeout, a dropped future) can never leave half a frame on the wire, and frames that
//! queue up while the socket is busy leave together in one vectored write.
//!
//! Over plain TCP ([`FrameWriter::tcp`]) the caller writes its frame itself, with a non-blocking
//! write, when nothing waits before it: a request or a reply leaves from the thread that made it,
//! without waking another thread to send it (on a machine with few cores, each such hand-off
//! costs tens of microseconds of a write's latency). What the socket does not take at once is
//! queued, and a task writes the queue out as the socket drains; frames queued meanwhile wait
//! behind it. Over any other stream (TLS, [`FrameWriter::spawn`]) one task writes every frame.
//!
//! A frame that follows the one before it within [`BURST_GAP`] is part of a burst (the replies
//! to one group commit, the forwards of one read from the client): it is queued, and the task
//! writes it once the runtime's other ready tasks have queued theirs, so the burst leaves in one
//! system call instead of one each. On loopback a send costs the sender the receiver's side of
//! TCP too, so under load this cuts the sends per replicated write by 60-75%.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};

use crate::proto::{self, Frame};

/// Most frames handed to one vectored write.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// A frame queued less than this after the one before it belongs to the same burst. At queue
/// depth 1 a connection carries one frame per round trip (hundreds of microseconds apart), so
/// every frame goes out at once; under load, replies and forwards come in runs microseconds
/// apart.
const BURST_GAP: Duration = Duration::from_micros(50);

type OnError = Box<dyn FnOnce(io::Error) + Send>;

/// Frames queued for one socket (see the module's documentation). Queueing never waits.
pub struct FrameWriter {
    inner: Inner,
}

enum Inner {
    /// Every frame goes through the writer task.
    Task(mpsc::UnboundedSender<Bytes>),
    /// Callers write directly while nothing is queued.
    Direct(Arc<Direct>),
}

impl FrameWriter {
    /// A writer for any stream: one task writes every frame. `on_error` runs once if a write
    /// fails (the task then stops). The task ends by itself when the `FrameWriter` is dropped,
    /// after sending what is queued.
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(
        mut write: W,
        on_error: impl FnOnce(io::Error) + Send + 'static,
    ) -> FrameWriter {
        let (frames, mut queued) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let mut batch = VecDeque::new();
            while let Some(frame) = queued.recv().await {
                batch.push_back(frame);
                // Whatever else is queued already goes out in the same system call: with many
                // requests in flight this saves most of a syscall per frame.
                while batch.len() < MAX_FRAMES_PER_WRITE {
                    match queued.try_recv() {
                        Ok(frame) => batch.push_back(frame),
                        Err(_) => break,
                    }
                }
                // TLS keeps what the socket did not take at once until the next write or a
                // flush; over TCP the flush costs nothing.
                let written = match write_all_vectored(&mut write, &mut batch).await {
                    Ok(()) => write.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    on_error(e);
                    return;
                }
            }
        });
        FrameWriter {
            inner: Inner::Task(frames),
        }
    }

    /// A writer for a TCP socket, whose callers write their frames themselves while nothing is
    /// queued. `on_error` runs once if a write fails (nothing is written after that). The
    /// socket is shut down for writing once the `FrameWriter` is dropped and what was queued
    /// has gone out.
    pub fn tcp(
        socket: OwnedWriteHalf,
        on_error: impl FnOnce(io::Error) + Send + 'static,
    ) -> FrameWriter {
        let direct = Arc::new(Direct {
            socket,
            state: Mutex::new(DirectState::default()),
            drain: Notify::new(),
            on_error: Mutex::new(Some(Box::new(on_error))),
        });
        tokio::spawn(drain(direct.clone()));
        FrameWriter {
            inner: Inner::Direct(direct),
        }
    }

    /// Encodes `frame` and queues it. `false` when the writer has stopped (a write failed).
    pub fn queue(&self, id: u64, frame: &Frame) -> bool {
        let mut buf = BytesMut::new();
        proto::encode(&mut buf, id, frame);
        self.queue_bytes(buf.freeze())
    }

    /// Queues bytes already encoded (another protocol's messages, say).
    pub fn queue_bytes(&self, bytes: Bytes) -> bool {
        match &self.inner {
            Inner::Task(frames) => frames.send(bytes).is_ok(),
            Inner::Direct(direct) => direct.queue(bytes),
        }
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        if let Inner::Direct(direct) = &self.inner {
            direct.lock().closing = true;
            direct.drain.notify_one();
        }
    }
}

struct Direct {
    socket: OwnedWriteHalf,
    state: Mutex<DirectState>,
    /// Wakes the drain task: frames were queued, or the writer was dropped.
    drain: Notify,
    on_error: Mutex<Option<OnError>>,
}

#[derive(Default)]
struct DirectState {
    /// Frames (or the rest of one) that the socket did not take at once, in order.
    queued: VecDeque<Bytes>,
    /// The drain task owns the socket until the queue is empty: callers queue behind it.
    draining: bool,
    /// A write failed; nothing more is written.
    failed: bool,
    /// The `FrameWriter` was dropped: the drain task ends once the queue is out.
    closing: bool,
    /// The queued frames wait for the others of their burst: the drain task lets the runtime's
    /// ready tasks run before it writes them.
    corked: bool,
    /// When the last frame was queued.
    last_frame: Option<Instant>,
}

impl Direct {
    fn lock(&self) -> MutexGuard<'_, DirectState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, bytes: Bytes) -> bool {
        let mut state = self.lock();
        if state.failed {
            return false;
        }
        let now = Instant::now();
        let burst = state
            .last_frame
            .is_some_and(|last| now.duration_since(last) < BURST_GAP);
        state.last_frame = Some(now);
        if state.draining {
            state.queued.push_back(bytes);
            return true;
        }
        if burst {
            // The rest of the burst is usually being made by tasks that are ready to run: the
            // drain task lets them queue their frames, then writes the lot in one system call.
            state.queued.push_back(bytes);
            state.draining = true;
            state.corked = true;
            drop(state);
            self.drain.notify_one();
            return true;
        }
        // Under the lock, so that no other frame goes out between this one's parts.
        let rest = match self.socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() => return true,
            Ok(n) => bytes.slice(n..),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
            Err(e) => {
                state.failed = true;
                drop(state);
                self.fail(e);
                return false;
            }
        };
        state.queued.push_back(rest);
        state.draining = true;
        drop(state);
        self.drain.notify_one();
        true
    }

    fn fail(&self, e: io::Error) {
        let on_error = self
            .on_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(on_error) = on_error {
            on_error(e);
        }
    }
}

/// Writes out what callers queued: frames the socket did not take at once, and held bursts.
async fn drain(direct: Arc<Direct>) {
    loop {
        if std::mem::take(&mut direct.lock().corked) {
            // Runs again once the runtime's ready tasks have had their turn.
            tokio::task::yield_now().await;
        }
        loop {
            let mut batch: VecDeque<Bytes> = {
                let mut state = direct.lock();
                if state.failed {
                    return;
                }
                if state.queued.is_empty() {
                    state.draining = false;
                    if state.closing {
                        return;
                    }
                    break;
                }
                let n = state.queued.len().min(MAX_FRAMES_PER_WRITE);
                state.queued.drain(..n).collect()
            };
            if let Err(e) = write_out(&direct.socket, &mut batch).await {
                direct.lock().failed = true;
                direct.fail(e);
                return;
            }
        }
        direct.drain.notified().await;
    }
}

/// Writes `batch` to `socket` whole, waiting for room as needed.
async fn write_out(socket: &OwnedWriteHalf, batch: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !batch.is_empty() {
        socket.writable().await?;
        let written = {
            let slices: Vec<IoSlice<'_>> = batch.iter().map(|frame| IoSlice::new(frame)).collect();
            match socket.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        advance(batch, written);
    }
    Ok(())
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &mut VecDeque<Bytes>,
) -> io::Result<()> {
    while !batch.is_empty() {
        let written = {
            let slices: Vec<IoSlice<'_>> = batch.iter().map(|frame| IoSlice::new(frame)).collect();
            write.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance(batch, written);
    }
    Ok(())
}

/// Drops the first `written` bytes of `batch`.
fn advance(batch: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let front = batch
            .front_mut()
            .expect("the kernel wrote no more than it was given");
        if front.len() <= written {
            written -= front.len();
            batch.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const FRAME_BYTES: usize = 64 * 1024;

    /// A frame that says who sent it and which of theirs it is, and whose every byte shows
    /// whether it arrived whole and unmixed.
    fn frame(sender: u32, seq: u32) -> Bytes {
        let mut bytes = vec![(sender * 31 + seq) as u8; FRAME_BYTES];
        bytes[..4].copy_from_slice(&sender.to_le_bytes());
        bytes[4..8].copy_from_slice(&seq.to_le_bytes());
        Bytes::from(bytes)
    }

    async fn pair() -> (OwnedWriteHalf, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connecting, listener.accept());
        let (_read, write) = connected.unwrap().into_split();
        // The read half may go: the write half keeps the socket open.
        (write, accepted.unwrap().0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_callers_arrive_whole_and_in_each_callers_order() {
        let (write, mut read) = pair().await;
        let writer = Arc::new(FrameWriter::tcp(write, |e| panic!("write failed: {e}")));
        let (senders, per_sender) = (8u32, 64u32);
        // Read while they write, so that the socket fills up and drains again and again: frames
        // go out directly, through the queue, and cut by partial writes.
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            read.read_to_end(&mut received).await.unwrap();
            received
        });
        let tasks: Vec<_> = (0..senders)
            .map(|sender| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for seq in 0..per_sender {
                        assert!(writer.queue_bytes(frame(sender, seq)));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        drop(writer);
        let received = reading.await.unwrap();
        assert_eq!(
            received.len(),
            (senders * per_sender) as usize * FRAME_BYTES
        );
        let mut next = vec![0u32; senders as usize];
        for chunk in received.chunks(FRAME_BYTES) {
            let sender = u32::from_le_bytes(chunk[..4].try_into().unwrap());
            let seq = u32::from_le_bytes(chunk[4..8].try_into().unwrap());
            assert_eq!(
                chunk,
                &frame(sender, seq)[..],
                "frame {sender}/{seq} mixed or cut"
            );
            assert_eq!(
                seq, next[sender as usize],
                "sender {sender}'s frames out of order"
            );
            next[sender as usize] += 1;
        }
    }

    /// TCP segments the socket `fd` has sent: with Nagle off, one per write of a few bytes.
    fn segments_sent(fd: std::os::fd::RawFd) -> u32 {
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid for the kernel to write, and `len` is their size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut libc::tcp_info as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info.tcpi_segs_out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_frame_leaves_at_once_and_a_burst_leaves_together() {
        use std::os::fd::AsRawFd;
        const SMALL: usize = 64;
        let small = |seq: u8| Bytes::from(vec![seq; SMALL]);
        let (write, mut read) = pair().await;
        write.as_ref().set_nodelay(true).unwrap();
        let fd = write.as_ref().as_raw_fd();
        let writer = FrameWriter::tcp(write, |e| panic!("write failed: {e}"));
        let before = segments_sent(fd);

        // A frame with none before it is on the wire when `queue` returns.
        assert!(writer.queue_bytes(small(0)));
        assert_eq!(segments_sent(fd) - before, 1, "a lone frame waited");
        let mut got = vec![0u8; SMALL];
        read.read_exact(&mut got).await.unwrap();
        assert_eq!(got, small(0));

        // Frames queued back to back go out together, whole and in order.
        let burst = 32u8;
        let before = segments_sent(fd);
        for seq in 1..=burst {
            assert!(writer.queue_bytes(small(seq)));
        }
        let mut got = vec![0u8; SMALL * burst as usize];
        read.read_exact(&mut got).await.unwrap();
        for (i, frame) in got.chunks(SMALL).enumerate() {
            assert_eq!(
                frame,
                &small(i as u8 + 1)[..],
                "frame {} cut or out of order",
                i + 1
            );
        }
        // Each pause of the queueing thread longer than the burst gap may cut the burst once;
        // half as many writes as frames leaves room for many.
        let sent = segments_sent(fd) - before;
        assert!(
            sent <= u32::from(burst) / 2,
            "{burst} frames queued back to back took {sent} writes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_connection_is_reported_once_and_refuses_further_frames() {
        let (write, read) = pair().await;
        let (errors, mut reported) = mpsc::unbounded_channel();
        let writer = FrameWriter::tcp(write, move |e| {
            errors
                .send(e.kind())
                .expect("the test waits for the report");
        });
        drop(read);
        // The peer's reset arrives with the first frame it refuses; the writer stops at the
        // next write at the latest.
        let mut refused = false;
        for seq in 0..1_000 {
            if !writer.queue_bytes(frame(0, seq)) {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "frames were still taken after the peer went away");
        assert!(
            reported.recv().await.is_some(),
            "the failure was not reported"
        );
    }
}
