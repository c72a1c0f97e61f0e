//! The baseline of the Redis benchmark: a bare consumer that only
//! XREADGROUPs and XACKs the entries of a stream, until a read comes back
//! empty.
//!
//! Usage: redis_baseline URL STREAM GROUP → prints `entries=N seconds=S rate=R`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(stream), Some(group)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: redis_baseline URL STREAM GROUP".into());
    };
    let mut conn = redis::Client::open(url)?.get_connection()?;
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
