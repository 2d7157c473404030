//! The journal form of statistics reports: each task's protobuf `ChunkStats` as lowercase hex,
//! so that a resumed job rebuilds its combined statistics from the journal alone.

/// The journal form of a statistics report: `(task id, hex of the protobuf ChunkStats)`.
pub fn encode_stats(stats: &[shardmerge_proto::v1::TaskStats]) -> Vec<(u64, String)> {
    use prost::Message;
    stats
        .iter()
        .map(|s| {
            let bytes = s.stats.as_ref().map(Message::encode_to_vec).unwrap_or_default();
            (s.task_id, hex(&bytes))
        })
        .collect()
}

/// Lowercase hex of `bytes` (statistics can be hundreds of MB over a 405B merge: no per-byte
/// formatting).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Decodes [`encode_stats`]; `Err` names what is malformed.
pub fn decode_stats(stats: &[(u64, String)]) -> Result<Vec<shardmerge_proto::v1::TaskStats>, String> {
    use prost::Message;
    stats
        .iter()
        .map(|(task_id, hex)| {
            let digits = hex.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(format!("statistics of task {task_id}: odd hex length"));
            }
            let nibble = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
            let bytes = digits
                .chunks_exact(2)
                .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| format!("statistics of task {task_id}: not hex"))?;
            let stats = shardmerge_proto::v1::ChunkStats::decode(bytes.as_slice())
                .map_err(|e| format!("statistics of task {task_id}: {e}"))?;
            Ok(shardmerge_proto::v1::TaskStats {
                task_id: *task_id,
                stats: Some(stats),
            })
        })
        .collect()
}
