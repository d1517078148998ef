//! The storage-buffer binding points of every shader, named once for the Rust side; the shaders
//! write the same numbers in `layout(std430, binding = N) ... buffer Name`, and a test parses them
//! and checks each block's binding against the constant of its name (upper case), so neither side
//! can change alone.

/// Binding constants of one group of shaders, and (for the test) the table of them by name.
macro_rules! bindings {
    ($(#[$doc:meta])* $group:ident { $($name:ident = $n:expr),* $(,)? }) => {
        $(#[$doc])*
        pub(crate) mod $group {
            $(pub(crate) const $name: u32 = $n;)*
            #[cfg(test)]
            pub(crate) const ALL: &[(&str, u32)] = &[$((stringify!($name), $n)),*];
        }
    };
}

bindings! {
    /// FractalDB: `chaos.comp`, `rescale.comp`, `splat.comp`, `resolve.comp`, `points.vert`,
    /// `clear.comp` and `common.glsl` (several programs: a number is shared only where one program
    /// never binds both).
    fractal { U = 0, MAPS = 1, NMAPS = 2, STATE = 3, XS = 4, YS = 5, PTS = 6, INFO = 7,
              POINTS = 0, WINNER = 1, LABELS = 2, MASKS = 3 }
}

bindings! {
    /// RCDB: `rcdb_segments.comp`, `rcdb_resolve.comp` and `clear.comp`.
    rcdb { SEGMENTS = 0, WINNER = 1, GRAYS = 2, PIXELS = 3 }
}

bindings! {
    /// MV-FractalDB: `mvfdb_chaos.comp`, `mvfdb_normalize.comp` and `mvfdb_points.vert`.
    mvfdb { U = 0, MAPS = 1, NMAPS = 2, STATE = 3, XYZ = 4, PTS = 5, INFO = 6, VIEWS = 7 }
}

/// The uniforms a shader source declares (`uniform <type> <name>[N];`, several per line allowed).
pub(crate) fn declared_uniforms(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        let Some(at) = code.find("uniform ") else {
            continue;
        };
        let decl = code[at + "uniform ".len()..]
            .split(';')
            .next()
            .unwrap_or("");
        let mut words = decl.split_whitespace();
        let _ty = words.next();
        let names: String = words.collect::<Vec<_>>().join(" ");
        for n in names.split(',') {
            let n = n.trim().split('[').next().unwrap_or("").trim();
            if !n.is_empty() {
                out.push(n.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `binding = N` of a buffer block, by block name: (name, N).
    fn blocks(src: &str) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for line in src.lines() {
            let Some(at) = line.find("binding = ") else {
                continue;
            };
            let rest = &line[at + "binding = ".len()..];
            let n: u32 = rest[..rest.find(')').unwrap()].trim().parse().unwrap();
            let after = &line[line.find("buffer ").expect("a buffer block") + 7..];
            let name = after.split_whitespace().next().unwrap().to_string();
            out.push((name, n));
        }
        out
    }

    fn shader(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("glsl")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn every_shader_block_binds_where_its_rust_constant_says() {
        type Group<'a> = (&'a [&'a str], &'a [(&'a str, u32)]);
        let groups: [Group; 3] = [
            (
                &[
                    "chaos.comp",
                    "rescale.comp",
                    "splat.comp",
                    "resolve.comp",
                    "points.vert",
                    "clear.comp",
                    "common.glsl",
                ],
                fractal::ALL,
            ),
            (
                &["rcdb_segments.comp", "rcdb_resolve.comp", "clear.comp"],
                rcdb::ALL,
            ),
            (
                &[
                    "mvfdb_chaos.comp",
                    "mvfdb_normalize.comp",
                    "mvfdb_points.vert",
                ],
                mvfdb::ALL,
            ),
        ];
        for (files, table) in groups {
            let mut used = std::collections::HashSet::new();
            for f in files {
                for (block, n) in blocks(&shader(f)) {
                    let key = block.to_uppercase();
                    let want = table.iter().find(|(k, _)| *k == key);
                    assert_eq!(
                        want.map(|w| w.1),
                        Some(n),
                        "{f}: buffer {block} at binding {n}, Rust has {want:?}"
                    );
                    used.insert(key);
                }
            }
            for (k, _) in table {
                assert!(used.contains(*k), "{k} is bound by no shader of {files:?}");
            }
        }
    }

    #[test]
    fn every_uniform_named_in_rust_is_declared_by_a_shader() {
        let mut declared = std::collections::HashSet::new();
        for e in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("glsl"))
            .unwrap()
        {
            let src = std::fs::read_to_string(e.unwrap().path()).unwrap();
            declared.extend(declared_uniforms(&src));
        }
        assert!(declared.contains("mask_keys") && declared.contains("n_points"));
        // The Rust sources that set uniforms by name: each literal name must be a shader's.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for rel in [
            "render/gl/chaos.rs",
            "render/gl/rescale.rs",
            "render/gl/raster.rs",
            "rcdb/gl.rs",
            "mvfdb/gl.rs",
        ] {
            let src = std::fs::read_to_string(root.join(rel)).unwrap();
            for call in ["set_u32(gl, \"", "location(\""] {
                for (i, _) in src.match_indices(call) {
                    let rest = &src[i + call.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    assert!(
                        declared.contains(name),
                        "{rel}: uniform {name} is in no shader"
                    );
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 40,
            "only {checked} uniform names found: the pattern no longer matches"
        );
    }

    /// Every shader names its CPU twin and the tests that compare them, and those tests exist.
    #[test]
    fn every_shader_names_its_cpu_twin_and_an_existing_test() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for e in std::fs::read_dir(root.join("glsl")).unwrap() {
            let path = e.unwrap().path();
            let src = std::fs::read_to_string(&path).unwrap();
            let head: String = src
                .lines()
                .take_while(|l| l.starts_with("//") || l.starts_with("#version"))
                .map(|l| l.trim_start_matches("//").trim())
                .collect::<Vec<_>>()
                .join(" ");
            let at = head.find("Compared by: ").unwrap_or_else(|| {
                panic!(
                    "{}: no 'CPU twin: ... Compared by: ...' header",
                    path.display()
                )
            });
            assert!(head.contains("CPU twin: "), "{}", path.display());
            let list = head[at + "Compared by: ".len()..]
                .split(". ")
                .next()
                .unwrap()
                .trim_end_matches('.');
            let mut file = String::new();
            for word in list.split([' ', ',']).filter(|w| !w.is_empty()) {
                if word.starts_with("tests/") {
                    file = std::fs::read_to_string(root.join(word))
                        .unwrap_or_else(|e| panic!("{}: {word}: {e}", path.display()));
                } else {
                    assert!(
                        file.contains(&format!("fn {word}(")),
                        "{}: no test {word}",
                        path.display()
                    );
                    n += 1;
                }
            }
        }
        assert!(n >= 15, "only {n} tests named");
    }
}
