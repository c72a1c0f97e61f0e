//! The baseline of the Redis benchmark: a bare consumer that only
//! XREADGROUPs and XACKs the entries of a stream, until a read comes back
//! empty; and the clock of the consumers measured against it.
//!
//! Usage:
//! - `redis_baseline URL STREAM GROUP` consumes → prints `entries=N seconds=S rate=R`;
//! - `redis_baseline URL STREAM GROUP --wait` consumes nothing: it waits
//!   until group GROUP exists, has read every entry (lag 0) and has nothing
//!   pending, and prints the same line for the time from its start to then
//!   (start it together with the consumer it times).

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(stream), Some(group)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: redis_baseline URL STREAM GROUP [--wait]".into());
    };
    let mut conn = redis::Client::open(url)?.get_connection()?;
    if args.next().as_deref() == Some("--wait") {
        return wait_until_drained(&mut conn, &stream, &group);
    }
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query(&mut conn);
    let start = Instant::now();
    let mut entries = 0u64;
    loop {
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("bare")
            .arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(&mut conn)?;
        let ids = ids(&reply);
        if ids.is_empty() {
            break;
        }
        entries += ids.len() as u64;
        let _: i64 = redis::cmd("XACK")
            .arg(&stream)
            .arg(&group)
            .arg(&ids)
            .query(&mut conn)?;
    }
    // The final empty read waited `BLOCK` for nothing: not part of the work.
    let seconds = start.elapsed().as_secs_f64() - 0.1;
    println!(
        "entries={entries} seconds={seconds:.3} rate={:.0}",
        entries as f64 / seconds
    );
    Ok(())
}

/// Polls XINFO GROUPS every 5 ms until `group` has lag 0 and nothing pending.
fn wait_until_drained(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let entries: u64 = redis::cmd("XLEN").arg(stream).query(conn)?;
    loop {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query(conn)?;
        let drained = groups.iter().any(|g| {
            let field = |name: &str| match g.get(name) {
                Some(redis::Value::Int(n)) => Some(*n),
                _ => None,
            };
            let named =
                matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes());
            named && field("lag") == Some(0) && field("pending") == Some(0)
        });
        if drained {
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "entries={entries} seconds={seconds:.3} rate={:.0}",
                entries as f64 / seconds
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ids(reply: &redis::Value) -> Vec<Vec<u8>> {
    let redis::Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for stream in streams {
        let redis::Value::Array(parts) = stream else {
            continue;
        };
        let Some(redis::Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            if let redis::Value::Array(e) = entry {
                if let Some(redis::Value::BulkString(id)) = e.first() {
                    ids.push(id.clone());
                }
            }
        }
    }
    ids
}
