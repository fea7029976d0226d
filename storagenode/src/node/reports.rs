//! Status reports of many units, gathered into few notifications.
//!
//! A node that restarts holding hundreds of units resyncs them all at once: each says it is
//! `syncing`, and each primary says each copy caught up. Sent one unit at a time, those are
//! hundreds of concurrent requests and Raft commits, and the managers refuse connections past
//! their limit per address. Here every report waits in a queue; one task sends what is queued,
//! one notification per kind (and target) naming up to [`MAX_UNITS_PER_NOTIFICATION`] units, and
//! whatever is queued while one is in flight goes in the next (group commit, as the engine's log
//! does it).
//!
//! Resync progress reports go one at a time, in the background: only the latest of each unit is
//! sent, and the resync does not wait for it.
//!
//! The database refuses a notification whole when one of its units is refused (a generation
//! moved on, a copy no longer `syncing`). A refused batch of several units is sent again one unit
//! at a time, so that each report gets the answer it would have had alone.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};
use tracing::debug;
use vbs_wire::api::{Notification, ResyncProgress, SliceMap, UnitGeneration};
use vbs_wire::managers::{ManagerError, Managers};
use vbs_wire::types::{NodeId, UnitId};

/// Most units one notification names (the database's own bound).
pub const MAX_UNITS_PER_NOTIFICATION: usize = 4096;

/// What a report says, and so which notification it goes in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Report {
    /// This node's copy starts catching up.
    Syncing,
    /// This node, the primary, says `target`'s copy caught up.
    CaughtUp { target: NodeId },
}

/// The database's answer to one unit's report: the slice as it is after it.
pub type Answer = Result<Option<SliceMap>, ManagerError>;

struct Waiting {
    unit: UnitGeneration,
    answer: oneshot::Sender<Answer>,
}

/// Reports waiting to be sent, and the task that sends them.
pub struct Reporter {
    source: NodeId,
    queue: Mutex<BTreeMap<Report, Vec<Waiting>>>,
    queued: Notify,
    /// The latest progress of each resync not yet sent.
    progress: Mutex<BTreeMap<UnitId, (UnitGeneration, ResyncProgress)>>,
    progressed: Notify,
}

impl Reporter {
    pub fn new(source: NodeId) -> Reporter {
        Reporter {
            source,
            queue: Mutex::new(BTreeMap::new()),
            queued: Notify::new(),
            progress: Mutex::new(BTreeMap::new()),
            progressed: Notify::new(),
        }
    }

    /// Reports `unit` and waits for the database's answer.
    pub async fn report(&self, report: Report, unit: UnitGeneration) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(report)
            .or_default()
            .push(Waiting { unit, answer });
        self.queued.notify_one();
        answered.await.unwrap_or_else(|_| {
            Err(ManagerError::Unreachable {
                tried: String::new(),
                last: "the node is stopping".into(),
            })
        })
    }

    /// Queues a resync's progress, replacing any of the same unit not yet sent.
    pub fn progress(&self, unit: UnitGeneration, progress: ResyncProgress) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unit.unit, (unit, progress));
        self.progressed.notify_one();
    }

    /// Sends what is queued, for the life of the node.
    pub async fn run(&self, managers: &Managers) {
        tokio::join!(self.send_reports(managers), self.send_progress(managers));
    }

    async fn send_progress(&self, managers: &Managers) {
        loop {
            self.progressed.notified().await;
            let queued =
                std::mem::take(&mut *self.progress.lock().unwrap_or_else(|p| p.into_inner()));
            for (unit, progress) in queued.into_values() {
                let notification = Notification::ResyncProgress {
                    source: self.source.clone(),
                    unit,
                    progress,
                };
                if let Err(e) = managers.notify(&notification).await {
                    debug!(unit = %unit.unit, error = %e, "resync progress not reported");
                }
            }
        }
    }

    async fn send_reports(&self, managers: &Managers) {
        loop {
            self.queued.notified().await;
            let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            for (report, mut waiting) in queued {
                while !waiting.is_empty() {
                    let rest = waiting.split_off(waiting.len().min(MAX_UNITS_PER_NOTIFICATION));
                    self.send(managers, &report, std::mem::replace(&mut waiting, rest))
                        .await;
                }
            }
        }
    }

    fn notification(&self, report: &Report, units: Vec<UnitGeneration>) -> Notification {
        match report {
            Report::Syncing => Notification::Syncing {
                source: self.source.clone(),
                units,
            },
            Report::CaughtUp { target } => Notification::CaughtUp {
                source: self.source.clone(),
                target: target.clone(),
                units,
            },
        }
    }

    async fn send(&self, managers: &Managers, report: &Report, batch: Vec<Waiting>) {
        let units: Vec<UnitGeneration> = batch.iter().map(|w| w.unit).collect();
        let count = units.len();
        let sent = managers.notify(&self.notification(report, units)).await;
        match sent {
            // A refusal of what the batch says (not of the managers' state: no leader, say).
            Err(ManagerError::Api { status, ref error }) if count > 1 && status < 500 => {
                debug!(?report, units = count, error = %error.error,
                    "a batch of reports was refused; sending them one by one");
                for waiting in batch {
                    let alone = self.notification(report, vec![waiting.unit]);
                    let answer = managers.notify(&alone).await.map(|reply| {
                        reply
                            .slices
                            .into_iter()
                            .find(|s| s.unit == waiting.unit.unit)
                    });
                    let _ = waiting.answer.send(answer);
                }
            }
            Err(e) => {
                for waiting in batch {
                    let _ = waiting.answer.send(Err(e.clone()));
                }
            }
            Ok(reply) => {
                let mut slices: BTreeMap<_, SliceMap> =
                    reply.slices.into_iter().map(|s| (s.unit, s)).collect();
                for waiting in batch {
                    let _ = waiting.answer.send(Ok(slices.remove(&waiting.unit.unit)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::Json;
    use vbs_wire::api::{ApiError, ErrorCode, NotificationResponse};
    use vbs_wire::types::{Generation, SliceIndex};

    use super::*;

    /// A manager that answers notifications, refusing whole any that names volume 7, and
    /// counts the units of each notification it gets.
    async fn manager(seen: Arc<Mutex<Vec<usize>>>) -> String {
        let app = axum::Router::new().route(
            "/v1/notifications",
            post(move |Json(n): Json<Notification>| {
                let seen = seen.clone();
                async move {
                    let units = match n {
                        Notification::Syncing { units, .. }
                        | Notification::CaughtUp { units, .. } => units,
                        other => panic!("unexpected {other:?}"),
                    };
                    seen.lock().unwrap().push(units.len());
                    if units.iter().any(|u| u.unit.volume.0 == 7) {
                        let refusal = ApiError {
                            error: "unit 7.0 is not syncing".into(),
                            code: ErrorCode::Conflict,
                            retry_after_ms: None,
                        };
                        return (StatusCode::CONFLICT, Json(refusal)).into_response();
                    }
                    let slices = units
                        .iter()
                        .map(|u| SliceMap {
                            unit: u.unit,
                            index: SliceIndex(0),
                            generation: u.generation,
                            primary: NodeId::parse("p").unwrap(),
                            copies: Vec::new(),
                        })
                        .collect();
                    Json(NotificationResponse { slices }).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// A reporter of node n1, running, that reports to [`manager`].
    async fn reporter(seen: Arc<Mutex<Vec<usize>>>) -> Arc<Reporter> {
        let managers = Managers::parse(&manager(seen).await, Duration::from_secs(5)).unwrap();
        let reporter = Arc::new(Reporter::new(NodeId::parse("n1").unwrap()));
        let running = reporter.clone();
        tokio::spawn(async move { running.run(&managers).await });
        reporter
    }

    fn unit(volume: u64) -> UnitGeneration {
        UnitGeneration {
            unit: UnitId::new(volume, 0),
            generation: Generation(1),
        }
    }

    #[tokio::test]
    async fn reports_made_together_go_in_one_notification_and_each_gets_its_slice() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = reporter(seen.clone()).await;
        let answers = futures::future::join_all(
            (100..300).map(|v| reporter.report(Report::Syncing, unit(v))),
        )
        .await;
        for (v, answer) in (100..300).zip(answers) {
            assert_eq!(answer.unwrap().unwrap().unit, UnitId::new(v, 0));
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().sum::<usize>(), 200, "{seen:?}");
        assert!(
            seen.len() <= 2,
            "200 reports took {} notifications",
            seen.len()
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_sent_again_unit_by_unit() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reporter = reporter(seen.clone()).await;
        let target = Report::CaughtUp {
            target: NodeId::parse("n2").unwrap(),
        };
        let answers =
            futures::future::join_all((5..10).map(|v| reporter.report(target.clone(), unit(v))))
                .await;
        for (v, answer) in (5..10).zip(answers) {
            match answer {
                Err(ManagerError::Api { error, .. }) if v == 7 => {
                    assert_eq!(error.code, ErrorCode::Conflict)
                }
                Ok(Some(slice)) if v != 7 => assert_eq!(slice.unit, UnitId::new(v, 0)),
                other => panic!("unit {v}.0: {other:?}"),
            }
        }
        // The batch of five, then each alone.
        assert_eq!(*seen.lock().unwrap(), [5, 1, 1, 1, 1, 1]);
    }
}
