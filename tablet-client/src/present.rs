//! Presenting decoded pictures with wgpu: the I420 planes are uploaded as three single-channel
//! textures and a fragment shader converts YUV to RGB (BT.601 limited range, like the encoder's
//! conversion), so the CPU never touches RGB pixels.
//!
//! The same [`YuvRenderer`] draws into a window's surface ([`crate::window`]) or into an
//! offscreen texture ([`Offscreen`]) that is read back: that is how the shader is checked against
//! swscale on a software adapter (Mesa lavapipe or llvmpipe) where there is no GPU.

use periphery_media::I420;

/// Why the GPU path failed.
#[derive(Debug, thiserror::Error)]
pub enum PresentError {
    /// No adapter at all, not even a software one.
    #[error("no graphics adapter (install Mesa's lavapipe or llvmpipe for a software one): {0}")]
    NoAdapter(String),
    /// The adapter refused a device.
    #[error("the graphics adapter refused a device: {0}")]
    Device(String),
    /// Reading the rendered picture back failed.
    #[error("reading the picture back failed: {0}")]
    Readback(String),
    /// The window system failed.
    #[error("window: {0}")]
    Window(String),
}

const SHADER: &str = r"
struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

// One triangle covering the viewport; uv runs 0..1 over the visible part.
@vertex
fn vs(@builtin(vertex_index) i: u32) -> VsOut {
    let x = f32((i << 1u) & 2u);
    let y = f32(i & 2u);
    var o: VsOut;
    o.pos = vec4<f32>(x * 2.0 - 1.0, 1.0 - y * 2.0, 0.0, 1.0);
    o.uv = vec2<f32>(x, y);
    return o;
}

@group(0) @binding(0) var plane_y: texture_2d<f32>;
@group(0) @binding(1) var plane_u: texture_2d<f32>;
@group(0) @binding(2) var plane_v: texture_2d<f32>;
@group(0) @binding(3) var smp: sampler;

// BT.601, limited range: the inverse of the appliance's BGRA->I420 conversion.
@fragment
fn fs(in: VsOut) -> @location(0) vec4<f32> {
    let y = textureSample(plane_y, smp, in.uv).r * 255.0 - 16.0;
    let u = textureSample(plane_u, smp, in.uv).r * 255.0 - 128.0;
    let v = textureSample(plane_v, smp, in.uv).r * 255.0 - 128.0;
    let c = 1.164383 * y;
    let rgb = vec3<f32>(c + 1.596027 * v, c - 0.391762 * u - 0.812968 * v, c + 2.017232 * u);
    return vec4<f32>(clamp(rgb / 255.0, vec3<f32>(0.0), vec3<f32>(1.0)), 1.0);
}
";

/// What the adapter in use is, for logs and the stats line.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    let kind = match info.device_type {
        wgpu::DeviceType::Cpu => "software",
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Other => "other",
    };
    format!("{} ({kind}, {:?})", info.name, info.backend)
}

/// Finds an adapter: a real GPU first, then the software fallback.
pub async fn adapter(
    instance: &wgpu::Instance,
    surface: Option<&wgpu::Surface<'_>>,
) -> Result<wgpu::Adapter, PresentError> {
    let mut errors = Vec::new();
    for fallback in [false, true] {
        match instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: fallback,
                compatible_surface: surface,
                apply_limit_buckets: false,
            })
            .await
        {
            Ok(a) => return Ok(a),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(PresentError::NoAdapter(errors.join("; ")))
}

/// A device and its queue on `adapter`.
pub async fn device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue), PresentError> {
    adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("periphery-tablet"),
            required_features: wgpu::Features::empty(),
            required_limits: wgpu::Limits::downlevel_webgl2_defaults()
                .using_resolution(adapter.limits()),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| PresentError::Device(e.to_string()))
}

/// The three plane textures of the current picture size and their bind group.
struct Planes {
    size: (u32, u32),
    y: wgpu::Texture,
    u: wgpu::Texture,
    v: wgpu::Texture,
    bind_group: wgpu::BindGroup,
}

/// Draws I420 pictures as RGB with a shader.
pub struct YuvRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    planes: Option<Planes>,
}

impl std::fmt::Debug for YuvRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YuvRenderer")
            .field("size", &self.planes.as_ref().map(|p| p.size))
            .finish_non_exhaustive()
    }
}

impl YuvRenderer {
    /// A renderer drawing into targets of `format` (a non-sRGB format: the pictures are
    /// already gamma-encoded). `filter` is how the picture is scaled to the target: linear for
    /// a window, nearest for a pixel-exact copy.
    pub fn new(
        device: &wgpu::Device,
        format: wgpu::TextureFormat,
        filter: wgpu::FilterMode,
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("yuv"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let texture_entry = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: true },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("yuv planes"),
            entries: &[
                texture_entry(0),
                texture_entry(1),
                texture_entry(2),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("yuv"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("yuv"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("yuv"),
            mag_filter: filter,
            min_filter: filter,
            ..Default::default()
        });
        Self {
            pipeline,
            layout,
            sampler,
            planes: None,
        }
    }

    /// The size of the picture uploaded last.
    pub fn picture_size(&self) -> Option<(u32, u32)> {
        self.planes.as_ref().map(|p| p.size)
    }

    /// Uploads `img` (textures are recreated when the size changes).
    pub fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, img: &I420) {
        let size = (img.width, img.height);
        if self.planes.as_ref().is_none_or(|p| p.size != size) {
            let plane = |label, w, h| {
                device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: w,
                        height: h,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::R8Unorm,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            };
            let y = plane("Y", size.0, size.1);
            let u = plane("U", size.0 / 2, size.1 / 2);
            let v = plane("V", size.0 / 2, size.1 / 2);
            let view = |t: &wgpu::Texture| t.create_view(&Default::default());
            let (yv, uv, vv) = (view(&y), view(&u), view(&v));
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("yuv planes"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::TextureView(&yv),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: wgpu::BindingResource::TextureView(&uv),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: wgpu::BindingResource::TextureView(&vv),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: wgpu::BindingResource::Sampler(&self.sampler),
                    },
                ],
            });
            self.planes = Some(Planes {
                size,
                y,
                u,
                v,
                bind_group,
            });
        }
        let Some(p) = &self.planes else { return };
        for (tex, data, w, h) in [
            (&p.y, &img.y, size.0, size.1),
            (&p.u, &img.u, size.0 / 2, size.1 / 2),
            (&p.v, &img.v, size.0 / 2, size.1 / 2),
        ] {
            queue.write_texture(
                tex.as_image_copy(),
                data,
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(w),
                    rows_per_image: Some(h),
                },
                wgpu::Extent3d {
                    width: w,
                    height: h,
                    depth_or_array_layers: 1,
                },
            );
        }
    }

    /// Records a pass that clears `target` to black and draws the picture into `viewport`
    /// (x, y, width, height in target pixels). Draws nothing before the first upload.
    pub fn draw(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        target: &wgpu::TextureView,
        viewport: Viewport,
    ) {
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("yuv"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        let Some(p) = &self.planes else { return };
        if viewport.width == 0 || viewport.height == 0 {
            return;
        }
        pass.set_viewport(
            viewport.x as f32,
            viewport.y as f32,
            viewport.width as f32,
            viewport.height as f32,
            0.0,
            1.0,
        );
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &p.bind_group, &[]);
        pass.draw(0..3, 0..1);
    }
}

/// Where a picture is drawn inside a target: its aspect ratio kept, centred, black bars around.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    /// Left edge, target pixels.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Viewport {
    /// The largest rectangle of the picture's aspect ratio that fits the target, centred.
    pub fn fit(picture: (u32, u32), target: (u32, u32)) -> Self {
        let (pw, ph) = (u64::from(picture.0.max(1)), u64::from(picture.1.max(1)));
        let (tw, th) = (u64::from(target.0), u64::from(target.1));
        // Width-limited unless that makes it too tall.
        let (w, h) = if tw * ph <= th * pw {
            (tw, tw * ph / pw)
        } else {
            (th * pw / ph, th)
        };
        Self {
            x: ((tw - w) / 2) as u32,
            y: ((th - h) / 2) as u32,
            width: w as u32,
            height: h as u32,
        }
    }

    /// Maps a point in target pixels to picture pixels; `None` outside the picture.
    pub fn to_picture(&self, picture: (u32, u32), x: f64, y: f64) -> Option<(i32, i32)> {
        let (lx, ly) = (x - f64::from(self.x), y - f64::from(self.y));
        if self.width == 0
            || self.height == 0
            || lx < 0.0
            || ly < 0.0
            || lx >= f64::from(self.width)
            || ly >= f64::from(self.height)
        {
            return None;
        }
        let px = (lx * f64::from(picture.0) / f64::from(self.width)) as i32;
        let py = (ly * f64::from(picture.1) / f64::from(self.height)) as i32;
        Some((px.min(picture.0 as i32 - 1), py.min(picture.1 as i32 - 1)))
    }
}

/// Renders into a texture and reads it back: no window needed.
pub struct Offscreen {
    /// The adapter in use.
    pub info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    renderer: YuvRenderer,
}

impl std::fmt::Debug for Offscreen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offscreen")
            .field("adapter", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl Offscreen {
    /// Opens the best adapter there is (software where there is no GPU), for pixel-exact
    /// conversion (nearest filtering, target the picture's size).
    pub fn new() -> Result<Self, PresentError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(adapter(&instance, None))?;
        let (device, queue) = pollster::block_on(device(&adapter))?;
        let renderer = YuvRenderer::new(
            &device,
            wgpu::TextureFormat::Bgra8Unorm,
            wgpu::FilterMode::Nearest,
        );
        Ok(Self {
            info: adapter.get_info(),
            device,
            queue,
            renderer,
        })
    }

    /// Converts `img` to tightly packed BGRA on the GPU.
    pub fn to_bgra(&mut self, img: &I420) -> Result<Vec<u8>, PresentError> {
        let (w, h) = (img.width, img.height);
        self.renderer.upload(&self.device, &self.queue, img);
        let target = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("offscreen"),
            size: wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Bgra8Unorm,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let row = (w * 4).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: u64::from(row) * u64::from(h),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.renderer.draw(
            &mut encoder,
            &target.create_view(&Default::default()),
            Viewport::fit((w, h), (w, h)),
        );
        encoder.copy_texture_to_buffer(
            target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row),
                    rows_per_image: Some(h),
                },
            },
            wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
        );
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| PresentError::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| PresentError::Readback(e.to_string()))?
            .map_err(|e| PresentError::Readback(e.to_string()))?;
        let view = buffer
            .get_mapped_range(..)
            .map_err(|e| PresentError::Readback(e.to_string()))?;
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        for r in 0..h as usize {
            let start = r * row as usize;
            out.extend_from_slice(&view[start..start + w as usize * 4]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_letterboxes_and_pillarboxes() {
        // Same aspect: fills.
        assert_eq!(
            Viewport::fit((1280, 800), (640, 400)),
            Viewport {
                x: 0,
                y: 0,
                width: 640,
                height: 400
            }
        );
        // Wider target: bars left and right.
        assert_eq!(
            Viewport::fit((1000, 1000), (1600, 1000)),
            Viewport {
                x: 300,
                y: 0,
                width: 1000,
                height: 1000
            }
        );
        // Taller target: bars top and bottom.
        assert_eq!(
            Viewport::fit((2000, 1000), (1000, 1000)),
            Viewport {
                x: 0,
                y: 250,
                width: 1000,
                height: 500
            }
        );
    }

    #[test]
    fn points_map_into_the_picture_or_nowhere() {
        let pic = (2000, 1000);
        let vp = Viewport::fit(pic, (1000, 1000));
        assert_eq!(vp.to_picture(pic, 0.0, 250.0), Some((0, 0)));
        assert_eq!(vp.to_picture(pic, 500.0, 500.0), Some((1000, 500)));
        assert_eq!(vp.to_picture(pic, 999.9, 749.9), Some((1999, 999)));
        assert_eq!(vp.to_picture(pic, 500.0, 100.0), None, "in the black bar");
        assert_eq!(vp.to_picture(pic, 500.0, 750.0), None, "just below");
        assert_eq!(vp.to_picture(pic, -1.0, 300.0), None);
    }
}
