//! A render stage kept resident: a family's stage (the GL engine's context, shaders and buffers)
//! opened on a thread of its own and fed requests of units for as long as its handles live, rather
//! than one run's fixed work. Python's datasets draw their GL batches through it (one per dataset
//! and process, made in the process that draws: `python::engine`). Requests queue in order;
//! waiting requests share the units of one cloud, so batches submitted ahead compute a cloud once.

use crate::error::{Error, Result};
use crate::render::{Backend, Canvas, Feed, StageStats, Stages, Unit};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};

/// A request's canvases: by unit, by slot (the unit's `instances`).
pub type Canvases = Vec<Vec<Vec<u8>>>;

/// Each sample's canvas in a request: (unit, slot, flip).
pub type Place = Vec<(usize, usize, u8)>;

/// A handle on the engine's thread (clones share it; the thread ends when the last is dropped).
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Request>,
}

struct Request {
    units: Vec<Unit>,
    reply: Sender<Result<Canvases>>,
}

impl Engine {
    /// Starts the thread; its stage (the context) is opened on the first request.
    pub fn start<S: Stages + Send + 'static>(stages: S, backend: Backend) -> Engine {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("fractaldb-gl".into())
            .spawn(move || serve(&stages, &backend, rx))
            .expect("cannot start the GL engine's thread");
        Engine { tx }
    }

    /// `units` handed to the engine; their canvases come with [`Pending::wait`]. Requests queue in
    /// order, so a caller that submits the next batch before waiting for this one keeps the device
    /// busy (the FractalDB stage runs the next batch's chaos games between this one's rasters).
    pub fn submit(&self, units: Vec<Unit>) -> Result<Pending> {
        let (reply, got) = crossbeam_channel::bounded(1);
        if units.iter().all(|u| u.instances.is_empty()) {
            let _ = reply.send(Ok(units.iter().map(|_| Vec::new()).collect()));
            return Ok(Pending(got));
        }
        self.tx
            .send(Request { units, reply })
            .map_err(|_| ended())?;
        Ok(Pending(got))
    }
}

fn ended() -> Error {
    Error::Other("internal: the GL engine's thread has ended".into())
}

/// A submitted request's canvases, when they come.
pub struct Pending(Receiver<Result<Canvases>>);

impl Pending {
    /// Canvases drawn already (the CPU engine).
    pub fn ready(canvases: Canvases) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(Ok(canvases));
        Pending(rx)
    }

    pub fn wait(self) -> Result<Canvases> {
        self.0.recv().map_err(|_| ended())?
    }
}

/// A batch of samples as one request: a unit per cloud (or stream stretch, or model) with the
/// instances the batch wants of it, each once; and where each sample's canvas is.
pub struct Batch {
    epoch: u64,
    pub units: Vec<Unit>,
    unit_of: HashMap<u64, usize>,
    slot_of: HashMap<(usize, u32), usize>,
    pub place: Place,
}

impl Batch {
    pub fn new(epoch: u64) -> Self {
        Batch {
            epoch,
            units: Vec::new(),
            unit_of: HashMap::new(),
            slot_of: HashMap::new(),
            place: Vec::new(),
        }
    }

    /// The next sample: instance `instance` (flipped `flip`) of the unit `key` names, which is
    /// (`class`, `row`).
    pub fn add(&mut self, key: u64, class: u32, row: u32, instance: u32, flip: u8) {
        let epoch = self.epoch;
        let units = &mut self.units;
        let u = *self.unit_of.entry(key).or_insert_with(|| {
            units.push(Unit {
                class,
                row,
                epoch,
                instances: Vec::new(),
            });
            units.len() - 1
        });
        let k = *self.slot_of.entry((u, instance)).or_insert_with(|| {
            units[u].instances.push(instance);
            units[u].instances.len() - 1
        });
        self.place.push((u, k, flip));
    }
}

/// The engine's thread: waits for a request, opens the stage (a failed open fails that request; the
/// next one tries again) and runs it until the handles are gone. A stage that stops (an error, an
/// interrupt) fails what it was drawing and is opened again for the next request.
fn serve(stages: &dyn Stages, backend: &Backend, rx: Receiver<Request>) {
    let stats = StageStats::default();
    let mut feed = Queue::new(rx);
    while feed.wait() {
        let ran = stages
            .open_on(backend, 0, &stats)
            .and_then(|mut stage| stage.run(&mut feed));
        match ran {
            Ok(()) if feed.closed => return,
            Ok(()) => feed.fail_all(Error::Interrupted),
            Err(e) => feed.fail_all(e),
        }
    }
}

/// A request being drawn: its canvases so far, how many are missing, where they go.
struct Drawing {
    canvases: Canvases,
    missing: usize,
    reply: Sender<Result<Canvases>>,
}

/// Where a stage unit's canvas goes: (request, unit in it, slot in that unit).
type Dest = (u64, usize, usize);

/// A cloud: (class, row, epoch).
type CloudKey = (u32, u32, u64);

/// A waiting stage unit: its id and its instances' slots.
type Waiting = (u64, HashMap<u32, usize>);

/// The stage's feed: units of the requests in arrival order, canvases back to their requests.
/// Requests that wait together share units: a cloud (class, row, epoch) two queued batches want is
/// one unit of the stage, its chaos game run once, its instances the union of theirs.
struct Queue {
    rx: Receiver<Request>,
    closed: bool,
    waiting: VecDeque<(u64, Unit)>,
    /// Waiting units by (class, row, epoch), with their instances' slots.
    merge: HashMap<CloudKey, Waiting>,
    /// (stage unit, slot) -> where its canvas goes.
    dest: HashMap<(u64, usize), Vec<Dest>>,
    requests: HashMap<u64, Drawing>,
    next_unit: u64,
    next_request: u64,
}

impl Queue {
    fn new(rx: Receiver<Request>) -> Self {
        Queue {
            rx,
            closed: false,
            waiting: VecDeque::new(),
            merge: HashMap::new(),
            dest: HashMap::new(),
            requests: HashMap::new(),
            next_unit: 0,
            next_request: 0,
        }
    }

    fn take(&mut self, r: Request) {
        let id = self.next_request;
        self.next_request += 1;
        let d = Drawing {
            canvases: r
                .units
                .iter()
                .map(|u| vec![Vec::new(); u.instances.len()])
                .collect(),
            missing: r.units.iter().map(|u| u.instances.len()).sum(),
            reply: r.reply,
        };
        if d.missing == 0 {
            let _ = d.reply.send(Ok(d.canvases));
            return;
        }
        for (k, unit) in r.units.into_iter().enumerate() {
            for (slot, &instance) in unit.instances.iter().enumerate() {
                let at = self.slot_for(&unit, instance);
                self.dest.entry(at).or_default().push((id, k, slot));
            }
        }
        self.requests.insert(id, d);
    }

    /// The waiting stage unit and slot that draws `instance` of `unit`'s cloud (added if new).
    fn slot_for(&mut self, unit: &Unit, instance: u32) -> (u64, usize) {
        let key = (unit.class, unit.row, unit.epoch);
        let (id, slots) = self.merge.entry(key).or_insert_with(|| {
            let id = self.next_unit;
            self.next_unit += 1;
            let fresh = Unit {
                instances: Vec::new(),
                ..unit.clone()
            };
            self.waiting.push_back((id, fresh));
            (id, HashMap::new())
        });
        let id = *id;
        let slot = match slots.get(&instance) {
            Some(&s) => s,
            None => {
                // The unit is waiting (merge holds only those), so it is in `waiting`.
                let (_, u) = self
                    .waiting
                    .iter_mut()
                    .rev()
                    .find(|(i, _)| *i == id)
                    .unwrap();
                u.instances.push(instance);
                slots.insert(instance, u.instances.len() - 1);
                u.instances.len() - 1
            }
        };
        (id, slot)
    }

    /// Blocks until a unit waits; false when every handle is gone.
    fn wait(&mut self) -> bool {
        while self.waiting.is_empty() {
            match self.rx.recv() {
                Ok(r) => self.take(r),
                Err(_) => {
                    self.closed = true;
                    return false;
                }
            }
        }
        true
    }

    /// Takes every request already queued (so their shared clouds merge), then up to `max` units.
    fn pop(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        while let Ok(r) = self.rx.try_recv() {
            self.take(r);
        }
        let n = max.max(1).min(self.waiting.len());
        let units: Vec<(u64, Unit)> = self.waiting.drain(..n).collect();
        for (_, u) in &units {
            self.merge.remove(&(u.class, u.row, u.epoch));
        }
        (n > 0).then_some(units)
    }

    /// Every request in hand fails with `why`.
    fn fail_all(&mut self, why: Error) {
        self.waiting.clear();
        self.merge.clear();
        self.dest.clear();
        for (_, d) in self.requests.drain() {
            let _ = d.reply.send(Err(copy_of(&why)));
        }
    }
}

/// A copy of `e` for another request: the same kind (a bad input stays a `ValueError` in Python).
fn copy_of(e: &Error) -> Error {
    match e {
        Error::Input { path, line, msg } => Error::input(path.clone(), *line, msg.clone()),
        Error::Flag { flag, msg } => Error::flag(flag, msg.clone()),
        Error::Interrupted => Error::Interrupted,
        other => Error::Other(other.to_string()),
    }
}

impl Feed for Queue {
    fn claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        if !self.wait() {
            return None;
        }
        self.pop(max)
    }

    fn try_claim(&mut self, max: usize) -> Option<Vec<(u64, Unit)>> {
        self.pop(max)
    }

    fn emit(&mut self, canvas: Canvas) -> bool {
        let Some(mut dests) = self.dest.remove(&(canvas.unit, canvas.slot)) else {
            return true; // a failed request's late canvas
        };
        let mut pixels = Some(canvas.pixels);
        while let Some((id, k, slot)) = dests.pop() {
            let d = self
                .requests
                .get_mut(&id)
                .expect("a request of a known unit");
            d.canvases[k][slot] = if dests.is_empty() {
                pixels.take().unwrap()
            } else {
                pixels.clone().unwrap()
            };
            d.missing -= 1;
            if d.missing == 0 {
                let d = self.requests.remove(&id).unwrap();
                let _ = d.reply.send(Ok(d.canvases));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Stage;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn unit(class: u32, row: u32, instances: &[u32]) -> Unit {
        Unit {
            class,
            row,
            epoch: 0,
            instances: instances.to_vec(),
        }
    }

    /// What a canvas of the fake stage holds: its cloud and instance.
    fn pixels(u: &Unit, instance: u32) -> Vec<u8> {
        vec![u.class as u8, u.row as u8, instance as u8, u.epoch as u8]
    }

    fn expected(units: &[Unit]) -> Canvases {
        units
            .iter()
            .map(|u| u.instances.iter().map(|&i| pixels(u, i)).collect())
            .collect()
    }

    #[test]
    fn queued_requests_share_a_clouds_unit_and_each_gets_its_canvases() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let a = vec![unit(1, 0, &[3, 1]), unit(2, 5, &[0])];
        let b = vec![unit(2, 5, &[0, 7]), unit(1, 0, &[1]), unit(1, 1, &[1])];
        let (ra, ga) = crossbeam_channel::bounded(1);
        let (rb, gb) = crossbeam_channel::bounded(1);
        tx.send(Request {
            units: a.clone(),
            reply: ra,
        })
        .unwrap();
        tx.send(Request {
            units: b.clone(),
            reply: rb,
        })
        .unwrap();
        let mut q = Queue::new(rx);
        let claimed = q.claim(100).unwrap();
        // Three clouds, each once, with the union of the instances both requests want.
        let got: Vec<(u32, u32, Vec<u32>)> = claimed
            .iter()
            .map(|(_, u)| (u.class, u.row, u.instances.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, 0, vec![3, 1]), (2, 5, vec![0, 7]), (1, 1, vec![1])]
        );
        assert!(q.try_claim(100).is_none());
        for (id, u) in &claimed {
            for (slot, &i) in u.instances.iter().enumerate() {
                assert!(ga.is_empty() || gb.is_empty());
                q.emit(Canvas {
                    unit: *id,
                    slot,
                    pixels: pixels(u, i),
                });
            }
        }
        assert_eq!(ga.recv().unwrap().unwrap(), expected(&a));
        assert_eq!(gb.recv().unwrap().unwrap(), expected(&b));
        assert!(q.requests.is_empty() && q.dest.is_empty() && q.merge.is_empty());
    }

    /// A stage that draws `pixels` for each instance, counts its clouds, and fails on class 99.
    struct Fake(Arc<AtomicU64>);
    struct FakeStage<'a>(&'a AtomicU64);
    use std::sync::Arc;

    impl Stage for FakeStage<'_> {
        fn run(&mut self, feed: &mut dyn Feed) -> Result<()> {
            while let Some(units) = feed.claim(2) {
                for (id, u) in units {
                    if u.class == 99 {
                        return Err(Error::input("class99.csv", Some(1), "a bad class"));
                    }
                    self.0.fetch_add(1, Ordering::Relaxed);
                    for (slot, &i) in u.instances.iter().enumerate() {
                        let c = Canvas {
                            unit: id,
                            slot,
                            pixels: pixels(&u, i),
                        };
                        if !feed.emit(c) {
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        }
    }

    impl Stages for Fake {
        fn backend(&self) -> &Backend {
            &crate::render::CPU
        }
        fn open_on<'s>(
            &'s self,
            _: &Backend,
            _: usize,
            _: &'s StageStats,
        ) -> Result<Box<dyn Stage + 's>> {
            Ok(Box::new(FakeStage(&self.0)))
        }
    }

    #[test]
    fn an_engine_serves_requests_in_turn_and_survives_a_failed_one() {
        let clouds = Arc::new(AtomicU64::new(0));
        let engine = Engine::start(Fake(clouds.clone()), Backend::Cpu);
        let a = vec![unit(1, 0, &[0, 1, 2]), unit(4, 2, &[9]), unit(5, 0, &[])];
        let ahead: Vec<Pending> = (0..3).map(|_| engine.submit(a.clone()).unwrap()).collect();
        for p in ahead {
            assert_eq!(p.wait().unwrap(), expected(&a));
        }
        // A bad unit fails its request with the stage's error (still an input error)...
        let bad = engine.submit(vec![unit(99, 0, &[0])]).unwrap().wait();
        assert!(matches!(bad, Err(Error::Input { .. })), "{bad:?}");
        // ...and the stage is opened again for the next.
        assert_eq!(
            engine.submit(a.clone()).unwrap().wait().unwrap(),
            expected(&a)
        );
        let empty = engine
            .submit(vec![unit(1, 0, &[])])
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(empty, vec![Vec::<Vec<u8>>::new()]);
        assert!(clouds.load(Ordering::Relaxed) >= 2);
    }
}
