//! `wal dump`: every segment and record of a WAL directory, decoded.

use std::path::PathBuf;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType};
use serde_json::{json, Value};
use server::pb::etcdserverpb::{request_op, RequestOp};
use server::pb::kvserverpb::{request, Request};
use wal::{Frame, Record, SegmentEnd};

use crate::output::{print_json, Format};
use crate::Failure;

#[derive(clap::Args)]
pub struct DumpArgs {
    /// The WAL directory (`<data-dir>/member/wal`).
    dir: PathBuf,
    /// Show entries from this raft index on (other record types are shown
    /// unless --type leaves them out).
    #[arg(long)]
    from_index: Option<u64>,
    /// Show entries up to this raft index.
    #[arg(long)]
    to_index: Option<u64>,
    /// Only these record types (repeatable).
    #[arg(long = "type", value_enum)]
    types: Vec<RecordType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RecordType {
    Chain,
    Pipelined,
    Metadata,
    Entry,
    Hardstate,
    Snapshot,
}

fn type_of(f: &Frame) -> RecordType {
    match f {
        Frame::Chain(_) => RecordType::Chain,
        Frame::Pipelined(_) => RecordType::Pipelined,
        Frame::Record(Record::Metadata { .. }) => RecordType::Metadata,
        Frame::Record(Record::Entry { .. }) => RecordType::Entry,
        Frame::Record(Record::HardState { .. }) => RecordType::Hardstate,
        Frame::Record(Record::Snapshot { .. }) => RecordType::Snapshot,
    }
}

fn show_key(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!(
            "0x{}",
            k.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

fn show_range(key: &[u8], end: &[u8]) -> String {
    if end.is_empty() {
        format!("key={}", show_key(key))
    } else {
        format!("key={} range_end={}", show_key(key), show_key(end))
    }
}

fn describe_op(op: &RequestOp) -> String {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => {
            format!("Range {}", show_range(&r.key, &r.range_end))
        }
        Some(request_op::Request::RequestPut(p)) => format!(
            "Put key={} value={}B lease={}",
            show_key(&p.key),
            p.value.len(),
            p.lease
        ),
        Some(request_op::Request::RequestDeleteRange(d)) => {
            format!("DeleteRange {}", show_range(&d.key, &d.range_end))
        }
        Some(request_op::Request::RequestTxn(t)) => describe_txn(t),
        None => "empty op".into(),
    }
}

fn describe_txn(t: &server::pb::etcdserverpb::TxnRequest) -> String {
    let list = |ops: &[RequestOp]| ops.iter().map(describe_op).collect::<Vec<_>>().join("; ");
    format!(
        "Txn compares={} success=[{}] failure=[{}]",
        t.compare.len(),
        list(&t.success),
        list(&t.failure)
    )
}

/// A raft entry's payload in words.
fn describe_entry(data: &[u8]) -> String {
    let e = match Entry::parse_from_bytes(data) {
        Ok(e) => e,
        Err(err) => return format!("undecodable raft entry ({err})"),
    };
    match e.get_entry_type() {
        EntryType::EntryConfChange => match ConfChange::parse_from_bytes(e.get_data()) {
            Ok(cc) => format!(
                "ConfChange {:?} node={:x}: {}",
                cc.get_change_type(),
                cc.node_id,
                match Request::decode(cc.get_context()) {
                    Ok(r) => describe_request(&r),
                    Err(err) => format!("undecodable context ({err})"),
                }
            ),
            Err(err) => format!("undecodable ConfChange ({err})"),
        },
        EntryType::EntryConfChangeV2 => match ConfChangeV2::parse_from_bytes(e.get_data()) {
            Ok(cc) => format!("ConfChangeV2 changes={}", cc.get_changes().len()),
            Err(err) => format!("undecodable ConfChangeV2 ({err})"),
        },
        EntryType::EntryNormal if e.get_data().is_empty() => "no-op (new leader)".into(),
        EntryType::EntryNormal => match Request::decode(e.get_data()) {
            Ok(r) => describe_request(&r),
            Err(err) => format!("undecodable request ({err})"),
        },
    }
}

/// A kvserver request in words.
fn describe_request(r: &Request) -> String {
    let what = match &r.op {
        Some(request::Op::Put(p)) => format!(
            "Put key={} value={}B lease={}{}",
            show_key(&p.key),
            p.value.len(),
            p.lease,
            if p.prev_kv { " prev_kv" } else { "" }
        ),
        Some(request::Op::DeleteRange(d)) => {
            format!("DeleteRange {}", show_range(&d.key, &d.range_end))
        }
        Some(request::Op::Txn(t)) => describe_txn(t),
        Some(request::Op::Compaction(c)) => format!("Compaction revision={}", c.revision),
        Some(request::Op::LeaseGrant(g)) => format!("LeaseGrant id={} ttl={}", g.id, g.ttl),
        Some(request::Op::LeaseRevoke(l)) => format!("LeaseRevoke id={}", l.id),
        Some(request::Op::Alarm(a)) => format!(
            "Alarm action={} member={} alarm={}",
            a.action, a.member_id, a.alarm
        ),
        Some(request::Op::MemberAttributes(m)) => format!(
            "MemberAttributes member={:x} name={} client_urls={}",
            m.id,
            m.name,
            m.client_urls.join(",")
        ),
        Some(request::Op::LeaseCheckpoints(c)) => format!(
            "LeaseCheckpoints {}",
            c.checkpoints
                .iter()
                .map(|cp| format!("{}:{}s", cp.id, cp.remaining_ttl))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Some(request::Op::MemberChange(c)) => {
            let m = c.member.clone().unwrap_or_default();
            format!(
                "MemberChange {:?} member={:x} peer_urls={}{}",
                c.kind(),
                m.id,
                m.peer_ur_ls.join(","),
                if m.is_learner { " learner" } else { "" }
            )
        }
        Some(request::Op::AuthEnable(_)) => "AuthEnable".into(),
        Some(request::Op::AuthDisable(_)) => "AuthDisable".into(),
        Some(request::Op::Authenticated(a)) => format!("Authenticated user={}", a.name),
        Some(request::Op::UserAdd(u)) => format!("UserAdd user={}", u.name),
        Some(request::Op::UserDelete(u)) => format!("UserDelete user={}", u.name),
        Some(request::Op::UserChangePassword(u)) => {
            format!("UserChangePassword user={}", u.name)
        }
        Some(request::Op::UserGrantRole(g)) => {
            format!("UserGrantRole user={} role={}", g.user, g.role)
        }
        Some(request::Op::UserRevokeRole(g)) => {
            format!("UserRevokeRole user={} role={}", g.name, g.role)
        }
        Some(request::Op::RoleAdd(r)) => format!("RoleAdd role={}", r.name),
        Some(request::Op::RoleDelete(r)) => format!("RoleDelete role={}", r.role),
        Some(request::Op::RoleGrantPermission(g)) => {
            let (kind, range) = g.perm.as_ref().map_or((0, String::new()), |p| {
                (p.perm_type, show_range(&p.key, &p.range_end))
            });
            format!("RoleGrantPermission role={} type={kind} {range}", g.name)
        }
        Some(request::Op::RoleRevokePermission(g)) => format!(
            "RoleRevokePermission role={} {}",
            g.role,
            show_range(&g.key, &g.range_end)
        ),
        None => "empty request".into(),
    };
    let by = match &r.caller {
        Some(c) if c.username.is_empty() => " by an anonymous client".to_string(),
        Some(c) => format!(" by {} (auth revision {})", c.username, c.auth_revision),
        None => String::new(),
    };
    format!("{what} (request id {}){by}", r.id)
}

fn describe(f: &Frame) -> (Option<u64>, Option<u64>, String) {
    match f {
        Frame::Chain(c) => (
            None,
            None,
            format!(
                "segment {} follows rolling checksum {:08x}",
                c.seq, c.prev_rolling
            ),
        ),
        Frame::Pipelined(p) => (
            None,
            None,
            format!(
                "written while the batch at @{}..@{} was in flight",
                p.prev_start, p.prev_end
            ),
        ),
        Frame::Record(Record::Metadata {
            member_id,
            cluster_id,
        }) => (
            None,
            None,
            format!("member {member_id:x} cluster {cluster_id:x}"),
        ),
        Frame::Record(Record::Entry { index, term, data }) => {
            (Some(*index), Some(*term), describe_entry(data))
        }
        Frame::Record(Record::HardState { term, vote, commit }) => (
            None,
            Some(*term),
            format!("term={term} vote={vote:x} commit={commit}"),
        ),
        Frame::Record(Record::Snapshot {
            index,
            term,
            conf_state,
        }) => {
            let voters = ConfState::parse_from_bytes(conf_state)
                .map(|c| format!("{:x?}", c.get_voters()))
                .unwrap_or_else(|e| format!("undecodable ({e})"));
            (Some(*index), Some(*term), format!("voters={voters}"))
        }
    }
}

pub fn dump(args: &DumpArgs, fmt: Format) -> Result<(), Failure> {
    let segments = wal::dump(&args.dir)?;
    if segments.is_empty() {
        return Err(format!("{}: no WAL segments", args.dir.display()).into());
    }
    let wanted = |f: &Frame| -> bool {
        if !args.types.is_empty() && !args.types.contains(&type_of(f)) {
            return false;
        }
        if let Frame::Record(Record::Entry { index, .. }) = f {
            if args.from_index.is_some_and(|lo| *index < lo)
                || args.to_index.is_some_and(|hi| *index > hi)
            {
                return false;
            }
        }
        true
    };
    let mut damaged = false;
    let mut json_segments = Vec::new();
    for seg in &segments {
        let end = match &seg.end {
            SegmentEnd::Clean { offset } => json!({"kind": "clean", "offset": offset}),
            SegmentEnd::Torn { offset, reason } => {
                json!({"kind": "torn", "offset": offset, "reason": reason})
            }
            SegmentEnd::Corrupt { offset, reason } => {
                damaged = true;
                json!({"kind": "corrupt", "offset": offset, "reason": reason})
            }
        };
        let mut records = Vec::new();
        if fmt == Format::Simple {
            println!(
                "segment {} (seq {}, first index {}): {} frames",
                seg.path.display(),
                seg.seq,
                seg.first_index,
                seg.frames.len()
            );
        }
        for f in seg.frames.iter().filter(|f| wanted(&f.frame)) {
            let (index, term, text) = describe(&f.frame);
            let kind = format!("{:?}", type_of(&f.frame)).to_lowercase();
            match fmt {
                Format::Simple => println!(
                    "  @{:<9} crc {:08x} ok  {:<9} {:>8} {:>5}  {}",
                    f.offset,
                    f.crc,
                    kind,
                    index.map(|i| i.to_string()).unwrap_or_default(),
                    term.map(|t| format!("t{t}")).unwrap_or_default(),
                    text
                ),
                Format::Json => records.push(json!({
                    "offset": f.offset, "crc": f.crc, "type": kind,
                    "index": index, "term": term, "description": text,
                })),
            }
        }
        match fmt {
            Format::Simple => match &seg.end {
                SegmentEnd::Clean { offset } => println!("  end of data at @{offset}"),
                SegmentEnd::Torn { offset, reason } => {
                    println!("  TORN TAIL starts at @{offset}: {reason} (recovery cuts it off)")
                }
                SegmentEnd::Corrupt { offset, reason } => {
                    println!("  CORRUPT at @{offset}: {reason}")
                }
            },
            Format::Json => json_segments.push(json!({
                "path": seg.path.display().to_string(), "seq": seg.seq,
                "first_index": seg.first_index, "records": records, "end": end,
            })),
        }
    }
    if fmt == Format::Json {
        print_json(&Value::Array(json_segments));
    }
    if damaged {
        return Err("the WAL holds corruption (see above)".into());
    }
    Ok(())
}
