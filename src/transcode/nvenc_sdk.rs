//! With the `nvenc-sdk` cargo feature: each GPU's H.264 encoder as NVENC itself describes it
//! (largest picture, B-frames, rate-control modes, lookahead), read through NVIDIA's Video
//! Codec SDK bindings (nvidia-video-codec-sdk). `rackcast probe` prints it beside what the
//! GStreamer registry says. Building it needs CUDA and the driver's libraries; the default
//! build leaves this module out and needs neither. `cargo check --features nvenc-sdk-check`
//! type-checks it on a machine without CUDA (nothing is linked).

use std::ffi::{c_int, c_void};

use cudarc::driver::CudaContext;
use nvidia_video_codec_sdk::sys::nvEncodeAPI::{
    NV_ENC_CAPS, NV_ENC_CAPS_PARAM, NV_ENC_CAPS_PARAM_VER, NV_ENC_CODEC_H264_GUID, NV_ENC_DEVICE_TYPE, NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS,
    NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER, NVENCAPI_VERSION,
};
use nvidia_video_codec_sdk::ENCODE_API;
use serde::Serialize;

/// One GPU's H.264 encoder limits.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderCaps {
    pub cuda_device: u32,
    pub max_width: i32,
    pub max_height: i32,
    pub max_b_frames: i32,
    /// NV_ENC_PARAMS_RC_MODE flags: constqp 0x0, vbr 0x1, cbr 0x2.
    pub rate_control_modes: i32,
    pub lookahead: bool,
}

/// Opens an encode session on CUDA device `device` and reads its H.264 caps; the error
/// says which step failed (no GPU, no NVENC on it, an old driver).
pub fn encoder_caps(device: u32) -> Result<EncoderCaps, String> {
    let context = CudaContext::new(device as usize).map_err(|e| format!("CUDA device {device}: {e:?}"))?;
    let mut params = NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS {
        version: NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER,
        deviceType: NV_ENC_DEVICE_TYPE::NV_ENC_DEVICE_TYPE_CUDA,
        apiVersion: NVENCAPI_VERSION,
        device: context.cu_ctx().cast::<c_void>(),
        ..Default::default()
    };
    let mut encoder = std::ptr::null_mut();
    // SAFETY: the parameters are initialised as the SDK requires; the session is destroyed
    // below on every path, and the context outlives it.
    let opened = unsafe { (ENCODE_API.open_encode_session_ex)(&mut params, &mut encoder) }.result_without_string();
    let caps = opened.map_err(|e| format!("opening an NVENC session on CUDA device {device}: {e:?}")).and_then(|()| {
        let query = |cap: NV_ENC_CAPS| -> Result<i32, String> {
            let mut param = NV_ENC_CAPS_PARAM { version: NV_ENC_CAPS_PARAM_VER, capsToQuery: cap, reserved: [0; 62] };
            let mut value: c_int = 0;
            // SAFETY: `encoder` is an open session; `param` and `value` live across the call.
            unsafe { (ENCODE_API.get_encode_caps)(encoder, NV_ENC_CODEC_H264_GUID, &mut param, &mut value) }
                .result_without_string()
                .map_err(|e| format!("reading {cap:?}: {e:?}"))?;
            Ok(value)
        };
        Ok(EncoderCaps {
            cuda_device: device,
            max_width: query(NV_ENC_CAPS::NV_ENC_CAPS_WIDTH_MAX)?,
            max_height: query(NV_ENC_CAPS::NV_ENC_CAPS_HEIGHT_MAX)?,
            max_b_frames: query(NV_ENC_CAPS::NV_ENC_CAPS_NUM_MAX_BFRAMES)?,
            rate_control_modes: query(NV_ENC_CAPS::NV_ENC_CAPS_SUPPORTED_RATECONTROL_MODES)?,
            lookahead: query(NV_ENC_CAPS::NV_ENC_CAPS_SUPPORT_LOOKAHEAD)? != 0,
        })
    });
    if !encoder.is_null() {
        // SAFETY: a session opened (or half-opened) above, destroyed once.
        if let Err(e) = unsafe { (ENCODE_API.destroy_encoder)(encoder) }.result_without_string() {
            tracing::warn!("closing the NVENC probe session on CUDA device {device}: {e:?}");
        }
    }
    caps
}
