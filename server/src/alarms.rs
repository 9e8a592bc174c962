//! Raised alarms (etcd's alarm store): NOSPACE when the database passes
//! its quota, CORRUPT when members disagree. They change only through raft
//! (every member applies the same alarm requests) and are stored in the
//! database's `alarm` bucket, so they survive restarts.

use crate::pb::etcdserverpb as pb;

/// Raised alarms (etcd's alarm store), changed only through raft.
#[derive(Debug, Default)]
pub struct Alarms {
    list: Vec<pb::AlarmMember>,
}

impl Alarms {
    /// The alarms the store recorded.
    pub fn from_store(store: &mvcc::Store) -> Result<Alarms, mvcc::Error> {
        Ok(Alarms {
            list: store
                .alarms()?
                .into_iter()
                .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                .collect(),
        })
    }

    pub fn no_space(&self) -> bool {
        self.list
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Nospace as i32)
    }

    /// Whether `member` has raised NOSPACE.
    pub fn no_space_of(&self, member: u64) -> bool {
        self.list
            .iter()
            .any(|a| a.member_id == member && a.alarm == pb::AlarmType::Nospace as i32)
    }

    pub fn corrupt(&self) -> bool {
        self.list
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Corrupt as i32)
    }

    pub fn list(&self) -> Vec<pb::AlarmMember> {
        self.list.clone()
    }

    /// Applies an alarm request (etcd's semantics: GET lists the alarms of
    /// the type asked, NONE meaning all; ACTIVATE and DEACTIVATE answer
    /// with the alarm changed).
    pub fn apply(&mut self, a: &pb::AlarmRequest) -> pb::AlarmResponse {
        use pb::alarm_request::AlarmAction;
        let member = pb::AlarmMember {
            member_id: a.member_id,
            alarm: a.alarm,
        };
        let alarms = match a.action() {
            AlarmAction::Get => self
                .list
                .iter()
                .filter(|m| a.alarm == pb::AlarmType::None as i32 || m.alarm == a.alarm)
                .cloned()
                .collect(),
            AlarmAction::Activate => {
                if a.alarm == pb::AlarmType::None as i32 {
                    Vec::new()
                } else {
                    if !self.list.contains(&member) {
                        self.list.push(member);
                    }
                    vec![member]
                }
            }
            AlarmAction::Deactivate => {
                let before = self.list.len();
                self.list
                    .retain(|m| !(m.member_id == a.member_id && m.alarm == a.alarm));
                if self.list.len() < before {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
        };
        pb::AlarmResponse {
            header: None,
            alarms,
        }
    }
}
