//! A toy dataset family, defined here and nowhere else: solid gray images, one shade per (class,
//! instance). It goes through the same folder and shard drivers, resume and the service as the three
//! real families, touching no file of the crate: the proof that a new family is its own file (plus,
//! for the command line, one registration line).

mod common;
use common::*;
use fractaldb::cluster::Rank;
use fractaldb::dataset::{
    self, Dataset, Env, FolderUnit, FolderWork, Run, ShardSettings, ShardWork,
};
use fractaldb::pipeline::Threads;
use fractaldb::plan::{Layout, Sample};
use fractaldb::render::{Backend, Canvas, Feed, ImageFormat, PngConfig, Stage, StageStats, Stages};
use fractaldb::sink::wds::SampleMeta;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The whole family: its settings, and the shade of an image.
struct Toy {
    classes: u32,
    instances: u32,
    size: u32,
}

fn shade(class: u32, instance: u32) -> u8 {
    (class * 40 + instance * 7) as u8
}

impl Dataset for Toy {
    fn kind(&self) -> &'static str {
        "toy"
    }
    fn title(&self) -> &'static str {
        "Toy"
    }
    fn class_names(&self) -> Vec<String> {
        (0..self.classes).map(|c| format!("c{c}")).collect()
    }
    fn image(&self) -> ImageFormat {
        ImageFormat::gray(self.size, self.size)
    }
    fn png(&self) -> PngConfig {
        PngConfig {
            level: 6,
            gray: true,
        }
    }
    fn folder_fingerprint(&self) -> serde_json::Value {
        let Toy {
            classes,
            instances,
            size,
        } = self;
        serde_json::json!({"classes": classes, "instances": instances, "size": size})
    }
    fn shard_fingerprint(&self, sh: &ShardSettings) -> serde_json::Value {
        let mut v = self.folder_fingerprint();
        v["seed"] = sh.seed.into();
        v["prefix"] = sh.prefix.clone().into();
        v
    }
    fn folder<'a>(&'a self, rank: &Rank, _: &Env) -> fractaldb::Result<Box<dyn FolderWork + 'a>> {
        let mine = (0..self.classes).filter(|c| *c as u64 % rank.world == rank.rank);
        Ok(Box::new(ToyFolder(self, mine.collect())))
    }
    fn shards<'a>(
        &'a self,
        sh: &ShardSettings,
        _: &Env,
    ) -> fractaldb::Result<Box<dyn ShardWork + 'a>> {
        let layout = Layout::with_shape(
            self.classes as u64,
            vec![0],
            self.instances,
            vec![1],
            sh.per_shard,
            sh.seed,
        );
        Ok(Box::new(ToyShards(layout, self.size)))
    }
}

struct ToyFolder<'a>(&'a Toy, Vec<u32>);

impl FolderWork for ToyFolder<'_> {
    fn dirs(&self) -> Vec<PathBuf> {
        self.1
            .iter()
            .map(|c| PathBuf::from(format!("c{c}")))
            .collect()
    }
    fn units(&self) -> u64 {
        self.1.len() as u64
    }
    fn unit(&self, i: u64) -> FolderUnit {
        let class = self.1[i as usize];
        let n = self.0.instances;
        let images = (0..n)
            .map(|k| {
                let s = Sample {
                    class,
                    row: 0,
                    instance: k,
                    flip: 1,
                };
                (k, 1, s, (class * n + k) as u64)
            })
            .collect();
        FolderUnit {
            class,
            row: 0,
            images,
        }
    }
    fn path(&self, s: Sample) -> PathBuf {
        PathBuf::from(format!("c{0}/c{0}_{1:03}", s.class, s.instance))
    }
    fn images(&self) -> u64 {
        self.1.len() as u64 * self.0.instances as u64
    }
    fn stages(&self) -> fractaldb::Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(ToyStages(self.0.size)))
    }
}

struct ToyShards(Layout, u32);

impl ShardWork for ToyShards {
    fn layout(&self) -> &Layout {
        &self.0
    }
    fn meta(&self, _: u64) -> Arc<dyn SampleMeta> {
        Arc::new(ToyMeta)
    }
    fn stages(&self, _: Option<&[u64]>) -> fractaldb::Result<Box<dyn Stages + Send + '_>> {
        Ok(Box::new(ToyStages(self.1)))
    }
}

struct ToyMeta;

impl SampleMeta for ToyMeta {
    fn json(&self, class: &str, s: Sample, id: u64) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(
            &serde_json::json!({"class": class, "instance": s.instance, "sample": id}),
        )
    }
}

struct ToyStages(u32);

impl Stages for ToyStages {
    fn backend(&self) -> &Backend {
        &fractaldb::render::CPU
    }
    fn open_on<'s>(
        &'s self,
        _: &Backend,
        _: usize,
        _: &'s StageStats,
    ) -> fractaldb::Result<Box<dyn Stage + 's>> {
        Ok(Box::new(ToyStage(self.0 as usize)))
    }
}

struct ToyStage(usize);

impl Stage for ToyStage {
    fn run(&mut self, feed: &mut dyn Feed) -> fractaldb::Result<()> {
        while let Some(units) = feed.claim(1) {
            for (id, unit) in units {
                for (slot, &k) in unit.instances.iter().enumerate() {
                    let pixels = vec![shade(unit.class, k); self.0 * self.0];
                    let canvas = Canvas {
                        unit: id,
                        slot,
                        pixels,
                    };
                    if !feed.emit(canvas) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

const SIZE: u32 = 8;

fn toy() -> Toy {
    Toy {
        classes: 3,
        instances: 5,
        size: SIZE,
    }
}

fn job(out: &Path, format: fractaldb::sink::Format, resume: bool) -> Run {
    Run {
        out: out.to_path_buf(),
        format,
        shards: ShardSettings {
            per_shard: 4,
            seed: 7,
            prefix: "toy".into(),
            dali_index: false,
        },
        resume,
        threads: Threads {
            render: 2,
            encode: 2,
            queue: 4,
        },
        writers: 2,
        rank: Rank {
            rank: 0,
            world: 1,
            local_rank: 0,
            source: "test".into(),
        },
        progress: fractaldb::progress::Mode::Quiet,
        backend: Backend::Cpu,
        encoding: fractaldb::encode::Encoding::Png,
    }
}

fn gray_of(path: &Path) -> Vec<u8> {
    let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = d.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (SIZE, SIZE));
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn a_toy_family_goes_through_folders_shards_resume_and_the_service() {
    use fractaldb::sink::Format;
    let tmp = tempfile::tempdir().unwrap();
    // Folders: every image, with its shade; a resume redraws only what is missing.
    let out = tmp.path().join("folder");
    let s = dataset::run(&toy(), &job(&out, Format::Folder, false)).unwrap();
    assert_eq!(s.images, 15);
    for c in 0..3 {
        for k in 0..5 {
            let p = out.join(format!("c{c}/c{c}_{k:03}.png"));
            assert_eq!(gray_of(&p), vec![shade(c, k); (SIZE * SIZE) as usize]);
        }
    }
    std::fs::remove_file(out.join("c1/c1_002.png")).unwrap();
    let s = dataset::run(&toy(), &job(&out, Format::Folder, true)).unwrap();
    assert_eq!((s.images, s.skipped), (1, 14));
    assert!(out.join("c1/c1_002.png").exists());
    // Other settings are refused, naming the setting, with nothing written.
    let other = Toy { size: 9, ..toy() };
    let e = dataset::run(&other, &job(&out, Format::Folder, true)).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    // Shards: read back by tar; a deleted shard comes back with the same bytes.
    let sh = tmp.path().join("shards");
    dataset::run(&toy(), &job(&sh, Format::Wds, false)).unwrap();
    let shards: Vec<PathBuf> = tars(&sh).iter().map(|t| sh.join(t)).collect();
    assert!(shards.len() >= 4, "{shards:?}");
    let mut members = 0;
    for t in &shards {
        let o = run_ok(std::process::Command::new("tar").arg("-tf").arg(t));
        members += String::from_utf8_lossy(&o.stdout).lines().count();
    }
    assert_eq!(members, 15 * 3, "cls, json and png per sample");
    let first = std::fs::read(&shards[0]).unwrap();
    std::fs::remove_file(&shards[0]).unwrap();
    let s = dataset::run(&toy(), &job(&sh, Format::Wds, true)).unwrap();
    assert!(s.skipped > 0 && s.images > 0, "{s:?}");
    assert_eq!(std::fs::read(&shards[0]).unwrap(), first);
    let e = dataset::run(&other, &job(&sh, Format::Wds, true)).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    // The service: the same bytes over HTTP (curl), until SIGTERM.
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        fractaldb::serve::run(fractaldb::serve::ServeOptions {
            dataset: Box::new(toy()),
            job: job(Path::new("unused"), Format::Wds, false),
            listen: "127.0.0.1:0".into(),
            public_url: None,
            cache_bytes: 1 << 20,
            prefetch: 0,
            max_clients: 4,
            drain: std::time::Duration::from_secs(600),
            idle: std::time::Duration::from_secs(30),
            access_log: false,
            ready: Some(tx),
        })
    });
    let addr = rx.recv_timeout(PATIENCE).expect("the service listens");
    let base = format!("http://{addr}");
    for t in &shards {
        let name = t.file_name().unwrap().to_str().unwrap();
        let (code, body) = curl_get(&base, name);
        assert_eq!(code, "200", "{name}");
        assert_eq!(body, std::fs::read(t).unwrap(), "{name}");
    }
    let pid = std::process::id().to_string();
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid]));
    server.join().unwrap().unwrap();
}
