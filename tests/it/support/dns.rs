//! A DNS server on a loopback UDP port for the discovery tests: answers A queries for the
//! names it holds with their current addresses (changeable while it runs), and any other
//! query with no records. hickory-proto decodes the queries and encodes the answers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

pub struct DnsServer {
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let names: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (table, done) = (Arc::clone(&names), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.metadata.authoritative = true;
                answer.add_queries(query.queries.clone());
                for q in &query.queries {
                    let name = q.name().to_string().trim_end_matches('.').to_ascii_lowercase();
                    if q.query_type() == RecordType::A {
                        for ip in table.lock().unwrap().get(&name).into_iter().flatten() {
                            answer.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(*ip))));
                        }
                    }
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Self { addr, names, stop }
    }

    /// `name` resolves to `addresses` from now on.
    pub fn set(&self, name: &str, addresses: &[&str]) {
        self.names.lock().unwrap().insert(name.to_owned(), addresses.iter().map(|a| a.parse().unwrap()).collect());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
