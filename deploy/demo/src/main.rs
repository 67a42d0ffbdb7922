//! `fogmesh-demo`: every component of the IoT face-detection pipeline of
//! `adts/face-detection.yaml` in one static binary (each image runs one
//! subcommand): camera -> receiver -> frame queue on disk -> detector(s) ->
//! outbox on disk -> sender -> collector.

mod camera;
mod collector;
mod detector;
mod exporter;
mod files;
mod frames;
mod queue;
mod receiver;
mod results;
mod sender;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fogmesh-demo", version, about = "Components of fogmesh's face-detection pipeline")]
struct Cli {
    #[command(subcommand)]
    component: Component,
}

#[derive(Subcommand)]
enum Component {
    /// Sends frames made from bundled images to the receiver at a steady rate; `POST /burst` raises it for a while.
    Camera(camera::Args),
    /// Accepts frames over TCP or UDP and queues them on disk for the detectors.
    Receiver(receiver::Args),
    /// Takes frames from the queue (several replicas share it), finds faces, writes results to the outbox.
    Detector(detector::Args),
    /// Forwards results from the outbox to the collector; they stay on disk until the collector has stored them.
    Sender(sender::Args),
    /// Stores results durably, serves a status page and Prometheus metrics.
    Collector(collector::Args),
    /// Measures detection time per frame on this machine (no network, no queue).
    BenchDetect(detector::BenchArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.component {
        Component::Camera(a) => camera::run(a),
        Component::Receiver(a) => receiver::run(a),
        Component::Detector(a) => detector::run(a),
        Component::Sender(a) => sender::run(a),
        Component::Collector(a) => collector::run(a),
        Component::BenchDetect(a) => detector::bench(a),
    };
    if let Err(e) = result {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
