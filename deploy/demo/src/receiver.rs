//! Fog receiver: accepts frames from cameras over TCP (one thread per
//! camera connection) or UDP (reassembled from chunks) and queues each one
//! durably on the host-path volume for the detectors. When the queue is
//! over `--max-queue`, new frames are dropped and counted: the disk of a
//! fog device is small and the newest backlog is the least useful.

use std::io::BufReader;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::exporter;
use crate::frames::{self, FrameHeader, UdpReassembly};
use crate::queue::FrameQueue;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:5000")]
    listen: String,
    #[arg(long, env = "PROTOCOL", default_value = "tcp", value_parser = ["tcp", "udp"])]
    protocol: String,
    /// The frame queue (a host-path volume shared with the detectors).
    #[arg(long, env = "QUEUE_DIR", default_value = "/data/frames")]
    queue: PathBuf,
    #[arg(long, env = "METRICS", default_value = "0.0.0.0:9102")]
    metrics: String,
    /// Frames waiting beyond which new ones are dropped.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 2000)]
    max_queue: usize,
}

#[derive(Clone, Default)]
struct Stats {
    received: Counter,
    bytes: Counter,
    rejected: Counter,
    dropped: Counter,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let queue = Arc::new(FrameQueue::open(&args.queue)?);
    let stats = Stats::default();
    let mut registry = Registry::default();
    registry.register("frames_received", "Frames accepted and queued", stats.received.clone());
    registry.register("frame_bytes_received", "Bytes of frames accepted", stats.bytes.clone());
    registry.register("frames_rejected", "Frames refused as malformed", stats.rejected.clone());
    registry.register("frames_dropped", "Frames dropped because the queue was full", stats.dropped.clone());
    exporter::serve(&args.metrics, registry, |_| None)?;
    let rejected = stats.rejected.clone();
    let accept = move |header: FrameHeader, jpeg: Vec<u8>| {
        if queue.depth() >= args.max_queue {
            if stats.dropped.inc() % 100 == 0 {
                tracing::warn!(max = args.max_queue, "frame queue is full; dropping new frames");
            }
            return;
        }
        match queue.push(&header.id(), &jpeg) {
            Ok(()) => {
                stats.received.inc();
                stats.bytes.inc_by(jpeg.len() as u64);
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "could not queue a frame"),
        }
    };
    tracing::info!(listen = %args.listen, protocol = %args.protocol, queue = %args.queue.display(), "receiver ready");
    if args.protocol == "udp" {
        let socket = UdpSocket::bind(&args.listen).with_context(|| format!("listen on {}/udp", args.listen))?;
        let mut reassembly = UdpReassembly::default();
        let mut buf = vec![0u8; 65_536];
        socket.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        loop {
            let incomplete = reassembly.expire();
            if incomplete > 0 {
                tracing::debug!(incomplete, "dropped frames that lost a chunk");
            }
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            match reassembly.take(&buf[..n]) {
                Ok(Some((header, jpeg))) => accept(header, jpeg),
                Ok(None) => {}
                Err(e) => refuse(&rejected, &from.to_string(), &e),
            }
        }
    }
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("listen on {}/tcp", args.listen))?;
    let accept = Arc::new(accept);
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let (accept, rejected) = (accept.clone(), rejected.clone());
        std::thread::spawn(move || {
            tracing::info!(%peer, "camera connected");
            let mut input = BufReader::new(stream);
            loop {
                match frames::read_tcp(&mut input) {
                    Ok(Some((header, jpeg))) => accept(header, jpeg),
                    Ok(None) => break,
                    Err(e) => {
                        refuse(&rejected, &peer, &e);
                        break;
                    }
                }
            }
            tracing::info!(%peer, "camera disconnected");
        });
    }
    Ok(())
}

fn refuse(rejected: &Counter, peer: &str, error: &anyhow::Error) {
    rejected.inc();
    tracing::warn!(%peer, error = %format!("{error:#}"), "refused malformed input");
}
