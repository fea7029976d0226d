//! `vbs events`: the managers' event log, oldest first, one line per entry (or JSON lines);
//! `--follow` keeps printing new entries as they are committed, like `ceph -w`.

use std::time::Duration;

use client::api::{Event, MAX_EVENTS_PER_PAGE};
use client::managers::Managers;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new entries as they come (until interrupted)
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line, as `GET /v1/events` serves them
    #[arg(long)]
    json: bool,
    /// Print the last N entries kept (all: --last 0 prints none, only new ones with --follow)
    #[arg(long, default_value_t = 50, value_name = "N")]
    last: u64,
}

/// How often `--follow` asks for new entries.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(managers: &Managers, args: EventsArgs) -> anyhow::Result<()> {
    let probe = managers.events(0, 1).await?;
    let mut after = probe.newest.saturating_sub(args.last);
    loop {
        let page = managers.events(after, MAX_EVENTS_PER_PAGE).await?;
        if page.missed > 0 {
            eprintln!(
                "vbs: {} entries were dropped from the managers' log before they could be read",
                page.missed
            );
        }
        for event in &page.events {
            println!("{}", line(event, args.json)?);
        }
        after = page.next;
        if page.events.len() == MAX_EVENTS_PER_PAGE {
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}

/// One entry as printed: `TIME  [WARN ]KIND-TEXT  (cause: ...)`, or its JSON.
fn line(event: &Event, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(event)?);
    }
    let time = chrono::DateTime::from_timestamp_millis(event.at_ms as i64)
        .filter(|_| event.at_ms > 0)
        .map_or_else(
            || "(time unknown)     ".to_string(),
            |t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            },
        );
    let level = if event.what.is_warning() { "WARN " } else { "" };
    let cause = event
        .cause
        .as_ref()
        .map_or(String::new(), |c| format!("  ({c})"));
    Ok(format!("{time}  {level}{}{cause}", event.what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::api::EventKind;
    use client::types::NodeId;

    #[test]
    fn a_line_says_when_what_and_why() {
        let event = Event {
            seq: 3,
            at_ms: 0,
            what: EventKind::NodeDown {
                node: NodeId("n2".into()),
                copies_down: 4,
            },
            cause: Some("failure detector: no heartbeat".into()),
        };
        let text = line(&event, false).expect("formats");
        assert_eq!(
            text,
            "(time unknown)       WARN node n2 down; 4 of its copies down with it  \
             (failure detector: no heartbeat)"
        );
        let json: serde_json::Value =
            serde_json::from_str(&line(&event, true).expect("formats")).expect("JSON");
        assert_eq!(json["kind"], "node_down");
        assert_eq!(json["seq"], 3);
    }
}
