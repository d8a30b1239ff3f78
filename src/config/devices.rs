//! Which device each rank of a run trains on: the `device` and `devices` settings read together.
//!
//! `device` names one device ("auto", "cpu", "cuda", "cuda:N") or lists one per rank
//! ("cuda:0,cuda:2", "cpu,cpu"); `devices` is the number of ranks. One device named for several
//! ranks expands: the CPU is shared by all of them (Gloo), GPUs are taken from the one named on
//! (cuda:1 with devices = 2 is cuda:1 and cuda:2; NCCL needs a GPU per rank).
use super::choices::{parse_device, DeviceChoice};
use super::validation::FieldError;
use crate::train::device::device_name;
use tch::Device;

/// The per-rank list a `device` value spells, each entry well formed, or the error naming the
/// field. Checks what holds on any machine: the count against `devices`, no mix of CPU and GPU,
/// no GPU twice.
pub fn parse_rank_devices(device: &str, devices: i64) -> Result<Vec<DeviceChoice>, FieldError> {
    let entries: Vec<&str> = device.split(',').map(str::trim).collect();
    let mut parsed = Vec::with_capacity(entries.len());
    for entry in &entries {
        match parse_device(entry) {
            Some(choice) => parsed.push(choice),
            None => {
                return Err(FieldError::new(
                    "device",
                    format!(
                        "must be auto, cpu or cuda:N, or a list with one per process \
                         (cuda:0,cuda:1), got {device:?}"
                    ),
                ))
            }
        }
    }
    if parsed.len() == 1 {
        return Ok(parsed);
    }
    if parsed.len() as i64 != devices {
        return Err(FieldError::new(
            "devices",
            format!(
                "device lists {} devices, one per process, so devices must be {} (got {devices})",
                parsed.len(),
                parsed.len()
            ),
        ));
    }
    let cpus = parsed.iter().filter(|d| **d == DeviceChoice::Cpu).count();
    if parsed.contains(&DeviceChoice::Auto) || (cpus != 0 && cpus != parsed.len()) {
        return Err(FieldError::new(
            "device",
            format!(
                "a list names either the CPU for every process or a GPU for each, got {device:?}"
            ),
        ));
    }
    let mut gpus: Vec<usize> = parsed
        .iter()
        .filter_map(|d| match d {
            DeviceChoice::Cuda(n) => Some(*n),
            _ => None,
        })
        .collect();
    gpus.sort_unstable();
    if gpus.windows(2).any(|w| w[0] == w[1]) {
        return Err(FieldError::new(
            "device",
            format!("each process needs its own GPU: {device:?} names one twice"),
        ));
    }
    Ok(parsed)
}

/// The device of every rank on this machine (`devices` entries), or the error naming the field.
pub fn resolve_rank_devices(device: &str, devices: i64) -> Result<Vec<Device>, FieldError> {
    let parsed = parse_rank_devices(device, devices)?;
    let resolve = |choice: DeviceChoice| choice.resolve().map_err(|e| FieldError::new("device", e));
    let ranks = devices.max(1) as usize;
    if parsed.len() > 1 {
        return parsed.into_iter().map(resolve).collect();
    }
    match resolve(parsed[0])? {
        Device::Cpu => Ok(vec![Device::Cpu; ranks]),
        Device::Cuda(first) => {
            let count = tch::Cuda::device_count().max(0) as usize;
            if first + ranks > count {
                return Err(FieldError::new(
                    "devices",
                    format!(
                        "{ranks} processes from cuda:{first} need a GPU each, up to cuda:{}; \
                         this machine has {count} CUDA device(s)",
                        first + ranks - 1
                    ),
                ));
            }
            Ok((first..first + ranks).map(Device::Cuda).collect())
        }
        other => Ok(vec![other; ranks]),
    }
}

/// The per-rank list as runs store it ("cuda:0,cuda:1", "cpu,cpu"; one name for one process).
pub fn rank_devices_name(devices: &[Device]) -> String {
    devices
        .iter()
        .map(|d| device_name(*d))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_expands_over_the_processes() {
        assert_eq!(
            resolve_rank_devices("cpu", 3).unwrap(),
            vec![Device::Cpu; 3]
        );
        assert_eq!(resolve_rank_devices("cpu", 1).unwrap(), vec![Device::Cpu]);
        assert_eq!(
            rank_devices_name(&resolve_rank_devices("cpu", 2).unwrap()),
            "cpu,cpu"
        );
    }

    #[test]
    fn a_list_has_one_entry_per_process() {
        assert_eq!(
            parse_rank_devices("cuda:0, cuda:2", 2).unwrap(),
            vec![DeviceChoice::Cuda(0), DeviceChoice::Cuda(2)]
        );
        assert_eq!(
            parse_rank_devices("cpu,cpu", 2).unwrap(),
            vec![DeviceChoice::Cpu; 2]
        );
        let e = parse_rank_devices("cuda:0,cuda:1", 3).unwrap_err();
        assert_eq!(e.field, "devices");
        assert!(e.message.contains("devices must be 2"), "{}", e.message);
        let e = parse_rank_devices("cuda:1,cuda:1", 2).unwrap_err();
        assert_eq!(e.field, "device");
        assert!(e.message.contains("names one twice"), "{}", e.message);
        let e = parse_rank_devices("cpu,cuda:0", 2).unwrap_err();
        assert_eq!(e.field, "device");
        let e = parse_rank_devices("gpu0", 1).unwrap_err();
        assert_eq!(e.field, "device");
        assert!(e.message.contains("\"gpu0\""), "{}", e.message);
    }

    #[test]
    fn gpus_this_machine_lacks_are_named() {
        let count = tch::Cuda::device_count() as usize;
        let e = resolve_rank_devices(&format!("cuda:{count}"), 1).unwrap_err();
        assert_eq!(e.field, "device");
        if count == 0 {
            let e = resolve_rank_devices("cuda:0,cuda:1", 2).unwrap_err();
            assert_eq!(e.field, "device");
            assert!(
                e.message.contains("cuda:0 is not available"),
                "{}",
                e.message
            );
        }
    }
}
