//! The retry loop around one data-plane request, and reporting a primary that does not answer.
//! The decisions come from [`super::retry`]; this is the IO around them.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::api::{Notification, Source, UnitGeneration};
use crate::conn::DataError;
use crate::proto::{ErrorCode, Request, Response};
use crate::types::{SliceIndex, BLOCK_BYTES};

use super::error::{ClientError, Op};
use super::map::{Route, Snapshot};
use super::retry::{classify, refresh_retryable, report_refused, Action, Backoff, ReportOutcome};
use super::Volume;

/// What one call carries from one attempt to the next.
struct Attempts {
    op: Op,
    slice: SliceIndex,
    started: Instant,
    deadline: Instant,
    /// The map the next attempt is routed by.
    snapshot: Arc<Snapshot>,
    backoff: Backoff,
    count: u32,
    /// What failed last, for [`ClientError::GaveUp`].
    last: String,
}

impl Attempts {
    fn route(&self) -> &Route {
        self.snapshot.route(self.slice)
    }

    fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    fn gave_up(&self) -> ClientError {
        ClientError::GaveUp {
            op: self.op,
            unit: self.route().unit,
            attempts: self.count,
            elapsed: self.started.elapsed(),
            last: self.last.clone(),
        }
    }
}

impl Volume {
    /// Sends the request `request` builds for `slice`'s current route until it is answered,
    /// retrying as [`classify`] says until `deadline`, and turns the answer into a `T` with
    /// `accept`; returns it with the route that answered.
    pub(super) async fn call<T>(
        &self,
        op: Op,
        slice: SliceIndex,
        deadline: Instant,
        request: impl Fn(&Route) -> Request,
        accept: impl Fn(Response) -> Result<T, String>,
    ) -> Result<(T, Route), ClientError> {
        let mut attempts = Attempts {
            op,
            slice,
            started: deadline - self.retry_deadline,
            deadline,
            snapshot: self.map.snapshot(),
            backoff: Backoff::new(),
            count: 0,
            last: String::new(),
        };
        loop {
            attempts.count += 1;
            let route = attempts.route().clone();
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A scrub answers when the whole slice is read back: only the deadline bounds it.
            let timeout = if op == Op::Scrub {
                remaining
            } else {
                self.io_timeout.min(remaining)
            };
            let error = match self.pool.call(&route.addr, request(&route), timeout).await {
                Ok(response) => {
                    return match accept(response) {
                        Ok(answer) => Ok((answer, route)),
                        Err(what) => Err(ClientError::BadResponse {
                            op,
                            unit: route.unit,
                            addr: route.addr,
                            what,
                        }),
                    }
                }
                Err(error) => error,
            };
            let action = classify(&error);
            debug!(%op, unit = %route.unit, ?action, %error, "request failed");
            attempts.last = format!(
                "primary {} ({}) at generation {}: {error}",
                route.primary, route.addr, route.generation
            );
            let wait = match (action, error) {
                (Action::Fail, DataError::Remote { error, .. })
                    if error.code == ErrorCode::Damaged =>
                {
                    let slice_start = u64::from(slice.0) * self.geometry().slice_bytes;
                    return Err(ClientError::Damaged {
                        op,
                        volume: self.name().to_string(),
                        offset: slice_start + error.detail * BLOCK_BYTES,
                        detail: error.message,
                    });
                }
                (Action::Fail, DataError::Remote { error, .. })
                    if error.code == ErrorCode::NoSpace =>
                {
                    return Err(ClientError::NoSpace {
                        op,
                        volume: self.name().to_string(),
                        slice: slice.0,
                        node: route.primary.to_string(),
                        detail: error.message,
                    });
                }
                (Action::Fail, DataError::Remote { addr, error }) => {
                    return Err(ClientError::Refused {
                        op,
                        unit: route.unit,
                        addr,
                        error,
                    })
                }
                // Retrying cannot fix credentials: give up now, saying why.
                (Action::Fail, DataError::Unauthorized { .. }) => return Err(attempts.gave_up()),
                // A timeout cut short by the deadline says nothing about the node: give up
                // rather than report it.
                _ if attempts.out_of_time() => Duration::ZERO,
                (Action::Refresh, _) => self.refresh(&mut attempts).await?,
                (Action::Report, error) => {
                    if matches!(error, DataError::Timeout { .. }) {
                        // The connection may be wedged: the next try opens a new one.
                        self.pool.forget(&route.addr).await;
                    }
                    self.after_silence(&route, &mut attempts).await?
                }
                (Action::Backoff | Action::Fail, _) => attempts.backoff.next_delay(),
            };
            if !wait.is_zero() {
                tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
            }
            if attempts.out_of_time() {
                return Err(attempts.gave_up());
            }
        }
    }

    /// Refreshes the map the call routes by; returns how long to wait before the next attempt:
    /// nothing when the slice's route changed, a backoff when it did not (a node still learning
    /// its units) or the managers could not be asked.
    async fn refresh(&self, attempts: &mut Attempts) -> Result<Duration, ClientError> {
        let seen = attempts.snapshot.version;
        let refresh = self.map.refresh(&self.managers, seen);
        match tokio::time::timeout_at(attempts.deadline, refresh).await {
            Ok(Ok(fresh)) => {
                let moved = fresh.route(attempts.slice) != attempts.route();
                attempts.snapshot = fresh;
                Ok(if moved {
                    attempts.backoff.reset();
                    Duration::ZERO
                } else {
                    attempts.backoff.next_delay()
                })
            }
            Ok(Err(error)) if refresh_retryable(&error) => {
                attempts
                    .last
                    .push_str(&format!("; refreshing the volume map: {error}"));
                Ok(attempts.backoff.next_delay())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                attempts
                    .last
                    .push_str("; refreshing the volume map: no answer before the deadline");
                Ok(Duration::ZERO)
            }
        }
    }

    /// The primary of `route` did not answer: reports it until the managers decide, then says
    /// how long to wait before the next attempt.
    async fn after_silence(
        &self,
        route: &Route,
        attempts: &mut Attempts,
    ) -> Result<Duration, ClientError> {
        match self.report_until_decided(route, attempts.deadline).await {
            ReportOutcome::FailedOver => {
                attempts.snapshot = self.map.snapshot();
                if attempts.route() != route {
                    attempts.backoff.reset();
                    Ok(Duration::ZERO)
                } else {
                    Ok(attempts.backoff.next_delay())
                }
            }
            ReportOutcome::Refresh => {
                attempts.last.push_str("; the slice had moved on");
                self.refresh(attempts).await
            }
            ReportOutcome::Wait(wait) => {
                attempts
                    .last
                    .push_str("; reported it unresponsive, its lease had not run out");
                Ok(wait)
            }
            ReportOutcome::Backoff(why) => {
                attempts
                    .last
                    .push_str(&format!("; reported it unresponsive: {why}"));
                Ok(attempts.backoff.next_delay())
            }
            ReportOutcome::Fail(error) => Err(error),
        }
    }

    /// Reports `route`'s primary unresponsive, and again each time the managers say its lease
    /// has not run out yet, until they decide or `deadline` passes.
    async fn report_until_decided(&self, route: &Route, deadline: Instant) -> ReportOutcome {
        loop {
            let outcome = match tokio::time::timeout_at(deadline, self.report(route)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return ReportOutcome::Backoff(
                        "no answer from the managers before the deadline".into(),
                    )
                }
            };
            match outcome {
                ReportOutcome::Wait(wait) if Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                }
                decided => return decided,
            }
        }
    }

    /// One report of `route`'s primary, shared by every request that found it silent.
    async fn report(&self, route: &Route) -> ReportOutcome {
        let key = (route.unit.slice, route.generation);
        self.reports
            .run(key, || async {
                if self.map.snapshot().route(route.unit.slice).generation > route.generation {
                    return ReportOutcome::FailedOver;
                }
                let notification = Notification::Unresponsive {
                    source: Source::Client(self.client_name.clone()),
                    target: route.primary.clone(),
                    units: vec![UnitGeneration {
                        unit: route.unit,
                        generation: route.generation,
                    }],
                };
                match self.managers.notify(&notification).await {
                    Ok(reply) => match self.map.merge(reply.slices) {
                        Ok(snapshot) => {
                            let new = snapshot.route(route.unit.slice);
                            info!(
                                unit = %route.unit,
                                from = %route.primary,
                                to = %new.primary,
                                generation = %new.generation,
                                "slice failed over after its primary did not answer"
                            );
                            ReportOutcome::FailedOver
                        }
                        Err(error) => ReportOutcome::Fail(error),
                    },
                    Err(error) => {
                        let outcome = report_refused(&error);
                        if !matches!(outcome, ReportOutcome::Wait(_)) {
                            warn!(
                                unit = %route.unit,
                                primary = %route.primary,
                                %error,
                                "reporting an unresponsive primary failed"
                            );
                        }
                        outcome
                    }
                }
            })
            .await
    }
}
