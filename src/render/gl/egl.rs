//! The whole headless EGL path in one place: load libEGL at run time, enumerate devices
//! (`EGL_EXT_device_enumeration`), open one with `EGL_EXT_platform_device` (falling back to
//! `EGL_MESA_platform_surfaceless`), and make an OpenGL core context current without a surface.

use crate::error::{Error, Result};
use khronos_egl as egl;
use std::ffi::{CStr, c_char, c_void};

type Egl = egl::DynamicInstance<egl::EGL1_5>;
type EglDevice = *mut c_void;

const EGL_PLATFORM_DEVICE_EXT: egl::Enum = 0x313F;
const EGL_PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;
const EGL_CUDA_DEVICE_NV: egl::Int = 0x323A;
const EGL_DRM_DEVICE_FILE_EXT: egl::Int = 0x3233;
const EGL_EXTENSIONS: egl::Int = 0x3055;

type QueryDevices =
    unsafe extern "system" fn(egl::Int, *mut EglDevice, *mut egl::Int) -> egl::Boolean;
type QueryDeviceString = unsafe extern "system" fn(EglDevice, egl::Int) -> *const c_char;
type QueryDeviceAttrib =
    unsafe extern "system" fn(EglDevice, egl::Int, *mut egl::Attrib) -> egl::Boolean;

/// libEGL, loaded at run time: `libEGL.so.1`, or the file named by `FRACTALDB_EGL_LIBRARY`.
pub fn load() -> Result<Egl> {
    let name = std::env::var("FRACTALDB_EGL_LIBRARY").unwrap_or_else(|_| "libEGL.so.1".into());
    // SAFETY: loading libEGL runs its initialisers; the file is the system's EGL loader (or the one
    // FRACTALDB_EGL_LIBRARY names), whose symbols khronos-egl binds by their EGL 1.5 signatures.
    unsafe { Egl::load_required_from_filename(&name) }.map_err(|e| {
        Error::Other(format!(
            "cannot load {name} ({e}): install the EGL loader `libegl1` plus a vendor driver \
             (Mesa: `libegl-mesa0 libgl1-mesa-dri`; or NVIDIA's driver with its EGL vendor library), \
             or use --backend cpu"
        ))
    })
}

/// One EGL device as the driver lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub index: usize,
    pub extensions: String,
    pub cuda_ordinal: Option<i64>,
    pub drm_file: Option<String>,
    pub software: bool,
    #[serde(skip)]
    raw: usize,
}

struct DeviceFns {
    query_devices: QueryDevices,
    query_string: QueryDeviceString,
    query_attrib: QueryDeviceAttrib,
}

fn device_fns(egl: &Egl) -> Option<DeviceFns> {
    // SAFETY: each pointer is eglGetProcAddress's for that very name, an EGL_EXT_device_* entry
    // point whose C signature the fn type it is transmuted to repeats (EGL_EXT_device_base).
    unsafe {
        Some(DeviceFns {
            query_devices: std::mem::transmute::<extern "system" fn(), QueryDevices>(
                egl.get_proc_address("eglQueryDevicesEXT")?,
            ),
            query_string: std::mem::transmute::<extern "system" fn(), QueryDeviceString>(
                egl.get_proc_address("eglQueryDeviceStringEXT")?,
            ),
            query_attrib: std::mem::transmute::<extern "system" fn(), QueryDeviceAttrib>(
                egl.get_proc_address("eglQueryDeviceAttribEXT")?,
            ),
        })
    }
}

/// Lists the EGL devices (empty when the driver has no device enumeration).
pub fn devices(egl: &Egl) -> Vec<DeviceInfo> {
    let Some(f) = device_fns(egl) else {
        return vec![];
    };
    // SAFETY: the entry points are EGL_EXT_device_query's (device_fns); the device array is sized
    // by the count the first call returned, and the strings the driver returns are NUL-terminated
    // and live as long as the display.
    unsafe {
        let mut n: egl::Int = 0;
        if (f.query_devices)(0, std::ptr::null_mut(), &mut n) == 0 || n <= 0 {
            return vec![];
        }
        let mut devs = vec![std::ptr::null_mut(); n as usize];
        if (f.query_devices)(n, devs.as_mut_ptr(), &mut n) == 0 {
            return vec![];
        }
        devs.truncate(n as usize);
        devs.into_iter()
            .enumerate()
            .map(|(index, d)| {
                let s = (f.query_string)(d, EGL_EXTENSIONS);
                let extensions = if s.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(s).to_string_lossy().into_owned()
                };
                let has = |e: &str| extensions.split_whitespace().any(|x| x == e);
                let mut v: egl::Attrib = 0;
                let cuda_ordinal = (has("EGL_NV_device_cuda")
                    && (f.query_attrib)(d, EGL_CUDA_DEVICE_NV, &mut v) != 0)
                    .then_some(v as i64);
                let drm = if has("EGL_EXT_device_drm") {
                    (f.query_string)(d, EGL_DRM_DEVICE_FILE_EXT)
                } else {
                    std::ptr::null()
                };
                let drm_file =
                    (!drm.is_null()).then(|| CStr::from_ptr(drm).to_string_lossy().into_owned());
                let software = has("EGL_MESA_device_software");
                DeviceInfo {
                    index,
                    extensions,
                    cuda_ordinal,
                    drm_file,
                    software,
                    raw: d as usize,
                }
            })
            .collect()
    }
}

/// Which device to open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Choice {
    /// A CUDA ordinal (after CUDA_VISIBLE_DEVICES), matched through EGL_CUDA_DEVICE_NV.
    pub cuda_ordinal: Option<i64>,
    /// An EGL device index (`fractaldb devices`), overriding the ordinal.
    pub egl_index: Option<usize>,
}

/// A current OpenGL context on one device, bound to the thread that created it.
pub struct Gl {
    egl: Egl,
    display: egl::Display,
    context: egl::Context,
    pub gl: glow::Context,
    pub vendor: String,
    pub renderer: String,
    pub version: String,
    pub device: String,
    pub software: bool,
}

impl Gl {
    /// A GL entry point glow does not wrap (`None` when the driver lacks it).
    pub fn proc_address(&self, name: &str) -> Option<extern "system" fn()> {
        self.egl.get_proc_address(name)
    }
}

impl Drop for Gl {
    fn drop(&mut self) {
        let _ = self.egl.make_current(self.display, None, None, None);
        let _ = self.egl.destroy_context(self.display, self.context);
        let _ = self.egl.terminate(self.display);
    }
}

/// The devices in the order we try them: the chosen one, else hardware (CUDA-capable first) before software.
fn ordered(devs: &[DeviceInfo], choice: Choice) -> Result<Vec<DeviceInfo>> {
    if let Some(i) = choice.egl_index {
        return devs.get(i).cloned().map(|d| vec![d]).ok_or_else(|| {
            Error::flag(
                "--egl-device",
                format!("no EGL device {i}: {} listed", devs.len()),
            )
        });
    }
    if let Some(c) = choice.cuda_ordinal
        && let Some(d) = devs.iter().find(|d| d.cuda_ordinal == Some(c))
    {
        return Ok(vec![d.clone()]);
    }
    let mut v = devs.to_vec();
    v.sort_by_key(|d| (d.software, d.cuda_ordinal.is_none(), d.index));
    Ok(v)
}

/// Opens an OpenGL >= 4.3 core context, current on this thread without a surface.
pub fn open(choice: Choice) -> Result<Gl> {
    open_profile(choice, false)
}

/// [`open`] with a compatibility-profile context when `compat`: the legacy point rasterisation
/// (no point sprites) that a default PyOpenGL context has, which MV-FractalDB's views depend on.
pub fn open_profile(choice: Choice, compat: bool) -> Result<Gl> {
    let egl = load()?;
    let devs = devices(&egl);
    let mut errors = Vec::new();
    let mut candidates: Vec<(String, bool, egl::Enum, *mut c_void)> = ordered(&devs, choice)?
        .into_iter()
        .map(|d| {
            let name = format!(
                "EGL device {}{}",
                d.index,
                d.cuda_ordinal
                    .map(|c| format!(" (CUDA {c})"))
                    .unwrap_or_default()
            );
            (
                name,
                d.software,
                EGL_PLATFORM_DEVICE_EXT,
                d.raw as *mut c_void,
            )
        })
        .collect();
    if candidates.is_empty() || choice.egl_index.is_none() {
        // Mesa's surfaceless platform needs no device enumeration.
        candidates.push((
            "Mesa surfaceless platform".into(),
            true,
            EGL_PLATFORM_SURFACELESS_MESA,
            std::ptr::null_mut(),
        ));
    }
    for (name, software, platform, native) in candidates {
        // SAFETY: `native` is null or an EGLDeviceEXT the driver listed, as try_open requires (its
        // note); the GL strings below are read with the context try_open made current on this
        // thread.
        match unsafe { try_open(&egl, platform, native, compat) } {
            Ok((display, context, gl)) => {
                // SAFETY: the context try_open made is current on this thread.
                let (vendor, renderer, version) = unsafe {
                    use glow::HasContext;
                    (
                        gl.get_parameter_string(glow::VENDOR),
                        gl.get_parameter_string(glow::RENDERER),
                        gl.get_parameter_string(glow::VERSION),
                    )
                };
                let software =
                    software || renderer.contains("llvmpipe") || renderer.contains("softpipe");
                return Ok(Gl {
                    egl,
                    display,
                    context,
                    gl,
                    vendor,
                    renderer,
                    version,
                    device: name,
                    software,
                });
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(Error::Other(format!(
        "no usable EGL device for OpenGL >= 4.3 core ({}); use --backend cpu",
        if errors.is_empty() {
            "none listed".to_string()
        } else {
            errors.join("; ")
        }
    )))
}

/// Opens a display of `platform` on `native` and a context on it, made current on this thread.
///
/// # Safety
/// `native` must be null or an `EGLDeviceEXT` this EGL listed (what eglGetPlatformDisplay takes for
/// `platform`).
unsafe fn try_open(
    egl: &Egl,
    platform: egl::Enum,
    native: *mut c_void,
    compat: bool,
) -> std::result::Result<(egl::Display, egl::Context, glow::Context), String> {
    // SAFETY: `native` is an EGLDeviceEXT from eglQueryDevicesEXT, or null for the default and
    // surfaceless platforms, as eglGetPlatformDisplay requires for `platform`.
    let display = unsafe { egl.get_platform_display(platform, native, &[egl::ATTRIB_NONE]) }
        .map_err(|e| format!("eglGetPlatformDisplay: {e}"))?;
    egl.initialize(display)
        .map_err(|e| format!("eglInitialize: {e}"))?;
    let result = (|| {
        egl.bind_api(egl::OPENGL_API)
            .map_err(|e| format!("eglBindAPI(OpenGL): {e}"))?;
        // SURFACE_TYPE defaults to WINDOW_BIT, which a headless device has none of. We draw into our own
        // FBOs and need no surface: ask for any surface type, then (some drivers) for pbuffer configs.
        let mut config = None;
        for surface in [0, egl::PBUFFER_BIT] {
            let attrs = [
                egl::RENDERABLE_TYPE,
                egl::OPENGL_BIT,
                egl::SURFACE_TYPE,
                surface,
                egl::NONE,
            ];
            config = egl
                .choose_first_config(display, &attrs)
                .map_err(|e| format!("eglChooseConfig: {e}"))?;
            if config.is_some() {
                break;
            }
        }
        let config = config.ok_or("no OpenGL-capable EGL config")?;
        let mut last = String::new();
        for minor in [6, 5, 4, 3] {
            let attrs = [
                egl::CONTEXT_MAJOR_VERSION,
                4,
                egl::CONTEXT_MINOR_VERSION,
                minor,
                egl::CONTEXT_OPENGL_PROFILE_MASK,
                if compat {
                    egl::CONTEXT_OPENGL_COMPATIBILITY_PROFILE_BIT
                } else {
                    egl::CONTEXT_OPENGL_CORE_PROFILE_BIT
                },
                egl::NONE,
            ];
            match egl.create_context(display, config, None, &attrs) {
                Ok(ctx) => {
                    egl.make_current(display, None, None, Some(ctx))
                        .map_err(|e| format!("eglMakeCurrent without a surface: {e}"))?;
                    // SAFETY: the context was made current on this thread just above, and every
                    // pointer glow is given comes from eglGetProcAddress for the name it asks for.
                    let gl = unsafe {
                        glow::Context::from_loader_function(|s| {
                            egl.get_proc_address(s)
                                .map_or(std::ptr::null(), |p| p as *const c_void)
                        })
                    };
                    return Ok((ctx, gl));
                }
                Err(e) => last = format!("OpenGL 4.{minor} core: {e}"),
            }
        }
        Err(format!("no OpenGL >= 4.3 core context ({last})"))
    })();
    match result {
        Ok((ctx, gl)) => Ok((display, ctx, gl)),
        Err(e) => {
            let _ = egl.terminate(display);
            Err(e)
        }
    }
}

/// The CUDA ordinal for a rank: `local_rank % visible GPUs`, or 0 when CUDA_VISIBLE_DEVICES pins one GPU.
pub fn cuda_ordinal_for(
    local_rank: u64,
    cuda_visible_devices: Option<&str>,
    n_devices: usize,
) -> i64 {
    let visible = match cuda_visible_devices {
        Some(v) if !v.trim().is_empty() => v.split(',').filter(|s| !s.trim().is_empty()).count(),
        _ => n_devices.max(1),
    };
    (local_rank % visible.max(1) as u64) as i64
}

/// What an opened device's GL context reports.
#[derive(Clone, Debug)]
pub struct GlInfo {
    pub vendor: String,
    pub renderer: String,
    pub version: String,
}

/// Every device with what opening it gives (or why it did not open).
pub fn describe_all() -> Result<Vec<(DeviceInfo, std::result::Result<GlInfo, String>)>> {
    let egl = load()?;
    let devs = devices(&egl);
    drop(egl);
    Ok(devs
        .into_iter()
        .map(|d| {
            let r = open(Choice {
                egl_index: Some(d.index),
                cuda_ordinal: None,
            })
            .map(|gl| GlInfo {
                vendor: gl.vendor.clone(),
                renderer: gl.renderer.clone(),
                version: gl.version.clone(),
            })
            .map_err(|e| e.to_string());
            (d, r)
        })
        .collect())
}

/// For `--backend auto`: a hardware device is listed and every chosen device opens on hardware (a cgroup
/// can list GPUs it hides). The probe contexts are destroyed before any render thread makes its own.
pub fn hardware_usable(choices: &[Choice]) -> bool {
    has_hardware_device() == Some(true)
        && choices
            .iter()
            .all(|&c| open(c).is_ok_and(|gl| !gl.software))
}

/// Whether a hardware (non-software) EGL device is listed; `None` when libEGL cannot be loaded.
pub fn has_hardware_device() -> Option<bool> {
    let egl = load().ok()?;
    Some(devices(&egl).iter().any(|d| !d.software))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_ordinal_follows_local_rank_and_visible_devices() {
        // One GPU pinned per rank by the launcher: always ordinal 0.
        assert_eq!(cuda_ordinal_for(3, Some("3"), 8), 0);
        // All 4 visible: local rank modulo 4.
        assert_eq!(cuda_ordinal_for(5, Some("0,1,2,3"), 8), 1);
        // Nothing set: local rank modulo the device count.
        assert_eq!(cuda_ordinal_for(9, None, 8), 1);
        assert_eq!(cuda_ordinal_for(2, Some(""), 8), 2);
    }

    #[test]
    fn hardware_devices_come_before_software_ones() {
        let d = |index, cuda: Option<i64>, software| DeviceInfo {
            index,
            extensions: String::new(),
            cuda_ordinal: cuda,
            drm_file: None,
            software,
            raw: 0,
        };
        let devs = [
            d(0, None, true),
            d(1, Some(1), false),
            d(2, Some(0), false),
            d(3, None, false),
        ];
        let order: Vec<usize> = ordered(&devs, Choice::default())
            .unwrap()
            .iter()
            .map(|d| d.index)
            .collect();
        assert_eq!(order, [1, 2, 3, 0]);
        let pick = ordered(
            &devs,
            Choice {
                cuda_ordinal: Some(0),
                egl_index: None,
            },
        )
        .unwrap();
        assert_eq!(pick.len(), 1);
        assert_eq!(pick[0].index, 2);
        assert!(
            ordered(
                &devs,
                Choice {
                    cuda_ordinal: None,
                    egl_index: Some(7)
                }
            )
            .is_err()
        );
    }
}
