//! Commands that concern a whole Redis deployment rather than one key: `SCAN` and `CLIENT LIST` see only
//! the server they run on, so on a Redis Cluster they must run on every primary (each holds its own slots
//! and its own clients). On a single server they simply run there.

use anyhow::Context as _;
use bullmq::redis_connection::AnyConnection;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use std::collections::BTreeSet;

/// The primaries of a cluster as `CLUSTER SLOTS` reports them (pure): the third element of every slot
/// range is its primary `[host, port, id, …]`.
pub fn primaries_from_slots(reply: &redis::Value) -> BTreeSet<(String, u16)> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut out = BTreeSet::new();
    let redis::Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let Some(redis::Value::Array(primary)) = fields.get(2) else {
            continue;
        };
        let host = primary.first().and_then(text);
        let port = match primary.get(1) {
            Some(redis::Value::Int(p)) => u16::try_from(*p).ok(),
            _ => None,
        };
        if let (Some(host), Some(port)) = (host, port) {
            if !host.is_empty() {
                out.insert((host, port));
            }
        }
    }
    out
}

async fn primaries(conn: &mut ClusterConnection) -> anyhow::Result<BTreeSet<(String, u16)>> {
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await
        .context("CLUSTER SLOTS")?;
    let found = primaries_from_slots(&reply);
    anyhow::ensure!(!found.is_empty(), "CLUSTER SLOTS names no primary");
    Ok(found)
}

/// Runs `cmd` on one node of the cluster.
async fn on_node<T: redis::FromRedisValue>(
    conn: &mut ClusterConnection,
    (host, port): &(String, u16),
    cmd: &redis::Cmd,
) -> anyhow::Result<T> {
    let reply = conn
        .route_command(
            cmd.clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            }),
        )
        .await
        .with_context(|| format!("on cluster node {host}:{port}"))?;
    Ok(redis::from_redis_value(reply)?)
}

/// Every key matching `pattern`, from the one server or from every primary of the cluster (a cluster's
/// `SCAN` walks only the node it runs on). A primary that does not answer fails the whole call: a partial
/// list would silently miss queues.
pub async fn scan_keys(conn: &AnyConnection, pattern: &str) -> anyhow::Result<Vec<String>> {
    let scan = |cursor: u64| {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        cmd
    };
    let mut keys = Vec::new();
    match conn.clone() {
        AnyConnection::Single(mut single) => {
            let mut cursor = 0;
            loop {
                let (next, found): (u64, Vec<String>) = scan(cursor)
                    .query_async(&mut single)
                    .await
                    .context("SCAN")?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        AnyConnection::Cluster(mut cluster) => {
            for node in primaries(&mut cluster).await? {
                let mut cursor = 0;
                loop {
                    let (next, found): (u64, Vec<String>) =
                        on_node(&mut cluster, &node, &scan(cursor))
                            .await
                            .context("SCAN")?;
                    keys.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
    }
    Ok(keys)
}

/// `CLIENT LIST` of the one server, or of every primary of the cluster (one list per node: a client named
/// on a cluster connection is named on each node that connection reaches, so the lists must not be merged;
/// see `queue_stats::workers_in_client_lists`). Fails when any node refuses.
pub async fn client_lists(conn: &AnyConnection) -> anyhow::Result<Vec<String>> {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("LIST");
    match conn.clone() {
        AnyConnection::Single(mut single) => Ok(vec![cmd
            .query_async::<String>(&mut single)
            .await
            .context("CLIENT LIST")?]),
        AnyConnection::Cluster(mut cluster) => {
            let mut lists = Vec::new();
            for node in primaries(&mut cluster).await? {
                lists.push(
                    on_node::<String>(&mut cluster, &node, &cmd)
                        .await
                        .context("CLIENT LIST")?,
                );
            }
            Ok(lists)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn primaries_are_read_from_cluster_slots() {
        let node =
            |host: &str, port: i64| Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]);
        let range = |a: i64, b: i64, nodes: Vec<Value>| {
            let mut fields = vec![Value::Int(a), Value::Int(b)];
            fields.extend(nodes);
            Value::Array(fields)
        };
        let reply = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7000), node("127.0.0.1", 7003)],
            ),
            range(5461, 10922, vec![node("127.0.0.1", 7001)]),
            range(
                10923,
                16383,
                vec![node("127.0.0.1", 7002), node("127.0.0.1", 7004)],
            ),
            range(16000, 16001, vec![node("127.0.0.1", 7000)]),
            range(1, 2, vec![node("", 7009)]),
            range(1, 2, vec![]),
            Value::Int(3),
        ]);
        let want: BTreeSet<(String, u16)> = [7000, 7001, 7002]
            .into_iter()
            .map(|p| ("127.0.0.1".to_owned(), p))
            .collect();
        assert_eq!(primaries_from_slots(&reply), want);
        assert!(primaries_from_slots(&Value::Nil).is_empty());
    }
}
