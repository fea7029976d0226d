//! `vbs node list|drain`.

use anyhow::Context;
use client::managers::Managers;
use client::types::NodeId;

use super::status::nodes_table;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List the storage nodes: state, capacity, units, last heartbeat, drains
    List {
        /// Print the storage nodes of `GET /v1/status` as JSON
        #[arg(long)]
        json: bool,
    },
    /// Move every copy off a storage node, to take it out of service; see `vbs status`
    Drain {
        /// Storage node id
        #[arg(value_parser = NodeId::parse)]
        name: NodeId,
    },
}

pub async fn run(managers: &Managers, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::List { json } => {
            let status = managers.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status.nodes)?);
            } else if status.nodes.is_empty() {
                println!("(none)");
            } else {
                print!("{}", nodes_table(&status.nodes).render());
            }
        }
        NodeCommand::Drain { name } => {
            let node = managers
                .drain_node(&name)
                .await
                .with_context(|| format!("draining storage node {name}"))?;
            println!("{}", drain_message(&node.id, node.units.len()));
        }
    }
    Ok(())
}

fn drain_message(node: &NodeId, units: usize) -> String {
    if units == 0 {
        format!("storage node {node} is drained: it holds no units")
    } else {
        format!(
            "draining storage node {node}: {units} unit{} to move; `vbs status` shows the \
             progress",
            if units == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_message_says_what_is_left() {
        let node = NodeId("n2".into());
        assert_eq!(
            drain_message(&node, 0),
            "storage node n2 is drained: it holds no units"
        );
        assert!(drain_message(&node, 1).contains("1 unit to move"));
        assert!(drain_message(&node, 3).contains("3 units to move"));
    }
}
