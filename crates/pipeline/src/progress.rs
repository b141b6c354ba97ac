//! Progress of the featurize phase: a bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use verger_datafusion::StageMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, a line every 10 s when it is not.
    #[default]
    Auto,
    Bar,
    Lines,
    Off,
}

pub(crate) struct Progress {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(crate) fn start(mode: ProgressMode, metrics: Arc<StageMetrics>) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Lines,
            other => other,
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let bar = (mode == ProgressMode::Bar).then(|| {
                let bar = ProgressBar::new(0);
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {pos}/{len} images {bar:30} {msg}")
                        .expect("valid template"),
                );
                bar
            });
            let tick = if bar.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            };
            loop {
                let finished = tokio::select! {
                    _ = tokio::time::sleep(tick) => false,
                    _ = stopped.changed() => true,
                };
                let listed = metrics.listed.load(Ordering::Relaxed);
                // Images an interrupted run already did count as done but
                // not in the rate: they cost nothing this time.
                let skipped = metrics.skipped.load(Ordering::Relaxed);
                let worked = metrics.featurized.load(Ordering::Relaxed)
                    + metrics.failed.load(Ordering::Relaxed);
                let done = worked + skipped;
                let failed = metrics.failed.load(Ordering::Relaxed);
                let expected = metrics.expected.load(Ordering::Relaxed);
                let listing = !metrics.listing_done.load(Ordering::Relaxed) && expected == 0;
                let listed = listed.max(expected);
                match &bar {
                    Some(bar) => {
                        bar.set_length(listed);
                        bar.set_position(done);
                        let rate = worked as f64 / started.elapsed().as_secs_f64().max(1e-9);
                        let eta = match listing {
                            true => "ETA ? (listing…)".to_string(),
                            false if rate > 0.0 => {
                                let left = listed.saturating_sub(done) as f64 / rate;
                                format!(
                                    "ETA {}",
                                    indicatif::HumanDuration(Duration::from_secs_f64(left))
                                )
                            }
                            false => "ETA ?".to_string(),
                        };
                        let errors = match failed {
                            0 => String::new(),
                            n => format!(", {n} errors"),
                        };
                        bar.set_message(format!("{rate:.1} images/s, {eta}{errors}"));
                    }
                    None if mode == ProgressMode::Lines && !finished => {
                        let elapsed = started.elapsed().as_secs_f64();
                        let rate = worked as f64 / elapsed.max(1e-9);
                        let eta = if listing || rate == 0.0 {
                            "?".to_string()
                        } else {
                            format!("{:.0}s", listed.saturating_sub(done) as f64 / rate)
                        };
                        eprintln!(
                            "progress: {done}/{listed}{} images, {failed} errors, {rate:.1} images/s, ETA {eta}",
                            if listing { "+ (listing)" } else { "" }
                        );
                    }
                    None => {}
                }
                if finished {
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    break;
                }
            }
        });
        Progress { stop, task }
    }

    pub(crate) async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
