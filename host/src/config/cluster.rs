//! Redis Cluster settings: the seed nodes of `REDIS_CLUSTER_NODES`, and the rule that every key of a queue
//! must hash to one cluster slot.
//!
//! BullMQ's scripts (and the host's own) read and write several keys of a queue in one call — `wait`,
//! `active`, the job hash, its lock, the events stream — and Redis Cluster runs a script only when all its
//! keys live in one slot. A key's slot is computed from its *hash tag* (the text between the first `{` and
//! the next `}`, when not empty) or else from the whole key, so the keys of a queue share a slot only when
//! `<prefix>:<queue>:` already fixes the tag: the prefix (`{bull}`) or the queue name carries it. Without
//! one, the first multi-key script fails with CROSSSLOT at run time; the host refuses to start instead.

use super::{invalid, vars, ConfigError};

/// The hash tag that every key starting with `key_start` hashes by, whatever follows; `None` when what
/// follows could change the slot (no `{`, an empty `{}`, or a `{` whose `}` has not come yet).
pub fn fixed_hash_tag(key_start: &str) -> Option<&str> {
    let open = key_start.find('{')?;
    let rest = &key_start[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// The hash tag shared by every key of `queue` under `prefix` (`<prefix>:<queue>:…`), if there is one.
pub fn queue_hash_tag<'a>(prefix: &'a str, queue: &'a str) -> Option<String> {
    fixed_hash_tag(&format!("{prefix}:{queue}:")).map(str::to_owned)
}

/// Refuses queues whose keys would spread over several slots, naming them and what to set.
pub fn require_one_slot<'q>(
    prefix: &str,
    queues: impl IntoIterator<Item = &'q str>,
) -> Result<(), ConfigError> {
    let spread: Vec<&str> = queues
        .into_iter()
        .filter(|q| queue_hash_tag(prefix, q).is_none())
        .collect();
    if spread.is_empty() {
        return Ok(());
    }
    Err(invalid(
        vars::BULLMQ_PREFIX.name,
        format!(
            "REDIS_CLUSTER_NODES selects Redis Cluster, but the keys of queue{} {} under prefix {prefix:?} \
             would spread over several cluster slots (BullMQ's scripts need all keys of a queue in one slot). \
             Set BULLMQ_PREFIX to a hash tag such as {{bull}} (BULLMQ_PREFIX={{bull}}), and give the Node \
             producers the same prefix (new Queue(name, {{ prefix: '{{bull}}', connection }})); \
             jobs already stored under another prefix are not seen under the new one",
            if spread.len() == 1 { "" } else { "s" },
            spread.join(", "),
        ),
    ))
}

/// Parses `REDIS_CLUSTER_NODES`: comma-separated seed nodes, each `redis://host:port`, `rediss://host:port`
/// (credentials allowed, as in `REDIS_URL`) or a bare `host:port` (taken as `redis://`). All must use the
/// same scheme. Messages never repeat a node: it may carry a password.
pub fn parse_nodes(raw: &str) -> Result<Vec<String>, ConfigError> {
    use redis::IntoConnectionInfo as _;
    let var = vars::REDIS_CLUSTER_NODES.name;
    let mut nodes = Vec::new();
    for (i, entry) in raw.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let url = match entry.split_once("://") {
            Some(("redis" | "rediss", _)) => entry.to_owned(),
            Some(_) => {
                return Err(invalid(
                    var,
                    format!(
                        "node {}: must start with redis:// or rediss://, or be host:port",
                        i + 1
                    ),
                ))
            }
            None => format!("redis://{entry}"),
        };
        let info = url.as_str().into_connection_info().map_err(|_| {
            invalid(
                var,
                format!("node {}: not a usable address (expected host:port with a port between 1 and 65535)", i + 1),
            )
        })?;
        match info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. }
                if !host.is_empty() && *port != 0 => {}
            _ => {
                return Err(invalid(
                    var,
                    format!(
                        "node {}: needs a host and a port between 1 and 65535",
                        i + 1
                    ),
                ))
            }
        }
        nodes.push(url);
    }
    if nodes.is_empty() {
        return Err(invalid(
            var,
            "names no node (expected host:port,host:port,…)",
        ));
    }
    let tls = nodes[0].starts_with("rediss://");
    if nodes.iter().any(|n| n.starts_with("rediss://") != tls) {
        return Err(invalid(
            var,
            "mixes redis:// and rediss:// nodes; use one scheme for all",
        ));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_has_one_slot_only_when_its_key_start_fixes_the_hash_tag() {
        // (prefix, queue, the tag every key of the queue hashes by)
        let table: &[(&str, &str, Option<&str>)] = &[
            ("{bull}", "sms-notifications", Some("bull")),
            ("{bull}", "{x}", Some("bull")),
            ("bull", "{sms}", Some("sms")),
            ("bull", "sms-notifications", None),
            ("bull", "email-digests", None),
            ("{}", "sms", None),
            ("{}bull", "{sms}", None),
            ("bu{ll", "sms", None),
            ("bu{ll", "sms}", Some("ll:sms")),
            ("bull{", "q", None),
            ("}bull{", "q}", Some(":q")),
            ("fg{eu}", "sms", Some("eu")),
            ("{a}{b}", "q", Some("a")),
        ];
        for (prefix, queue, want) in table {
            assert_eq!(
                queue_hash_tag(prefix, queue).as_deref(),
                *want,
                "prefix {prefix:?} queue {queue:?}"
            );
        }
    }

    #[test]
    fn queues_without_a_fixed_tag_are_refused_with_what_to_set() {
        assert!(require_one_slot("{bull}", ["sms-notifications", "email-digests"]).is_ok());
        assert!(require_one_slot("bull", ["{sms}"]).is_ok());
        assert!(require_one_slot("bull", std::iter::empty()).is_ok());
        let err = require_one_slot("bull", ["sms-notifications", "{ok}", "email-digests"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("BULLMQ_PREFIX: REDIS_CLUSTER_NODES selects Redis Cluster"),
            "{err}"
        );
        assert!(
            err.contains("queues sms-notifications, email-digests under prefix \"bull\""),
            "{err}"
        );
        assert!(err.contains("BULLMQ_PREFIX={bull}"), "{err}");
        assert!(err.contains("prefix: '{bull}'"), "{err}");
        assert!(!err.contains("{ok}"), "{err}");
    }

    #[test]
    fn cluster_nodes_are_parsed_or_refused_without_repeating_them() {
        let ok: &[(&str, &[&str])] = &[
            ("127.0.0.1:7000", &["redis://127.0.0.1:7000"]),
            (
                " redis://a:7000 , b:7001,,",
                &["redis://a:7000", "redis://b:7001"],
            ),
            (
                "redis://:s3cret@a:7000,redis://:s3cret@b:7000",
                &["redis://:s3cret@a:7000", "redis://:s3cret@b:7000"],
            ),
            (
                "rediss://a:7000,rediss://b:7000",
                &["rediss://a:7000", "rediss://b:7000"],
            ),
        ];
        for (raw, want) in ok {
            assert_eq!(parse_nodes(raw).unwrap(), *want, "{raw}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "names no node"),
            (" , ", "names no node"),
            ("http://a:7000", "node 1: must start with redis://"),
            ("a:7000,b:0", "node 2:"),
            ("a:99999", "node 1:"),
            ("redis://a:1,rediss://b:2", "mixes redis:// and rediss://"),
            ("redis://:pw@a:notaport", "node 1:"),
        ];
        for (raw, want) in bad {
            let err = parse_nodes(raw).unwrap_err().to_string();
            assert!(err.starts_with("REDIS_CLUSTER_NODES: "), "{raw}: {err}");
            assert!(err.contains(want), "{raw}: {err}");
            assert!(!err.contains("pw"), "{raw}: {err}");
        }
    }
}
