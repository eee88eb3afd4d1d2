// iOS: the microphone into compress's streaming Core ML model (stream.mlpackage), one hop at a time.
//
// The contract (README "Streaming keyword spotting"): input `audio` Float32 [1, hop_samples] of mono PCM at
// sample_rate in [-1, 1]; every other input is a state, zeros at the start, fed back from `<state>_out`;
// output `probs` [1, classes] in `labels` order; the model's user-defined metadata `streaming` holds the
// JSON below. The detection rule is the tool's: a keyword fires when the mean of its probs over the last
// smoothing_hops hops reaches threshold, then not again for refractory_hops hops.
// Not compiled in this repository's CI (no macOS there): a starting point to paste into an app target.

import AVFoundation
import CoreML

struct StreamingContract: Decodable {
    let sample_rate: Int
    let hop_samples: Int
    let window_samples: Int
    let labels: [String]
    let keywords: [String]
    let threshold: Double
    let smoothing_hops: Int
    let refractory_hops: Int
}

final class WakeWordListener {
    private let model: MLModel
    let contract: StreamingContract
    private var states: [String: MLMultiArray] = [:]
    private var pending: [Float] = []
    private var recent: [[Float]] = []           // the last smoothing_hops rows of probs
    private var quietUntil: [String: Int] = [:]  // per keyword: the last hop of its refractory period
    private var hop = 0
    private let engine = AVAudioEngine()
    var onKeyword: ((String, Int) -> Void)?      // (keyword, hop index)

    init(compiledModelURL: URL) throws {
        model = try MLModel(contentsOf: compiledModelURL)
        let metadata = model.modelDescription.metadata[.creatorDefinedKey] as? [String: String] ?? [:]
        guard let json = metadata["streaming"]?.data(using: .utf8) else {
            throw NSError(domain: "WakeWord", code: 1, userInfo: [NSLocalizedDescriptionKey: "no 'streaming' metadata"])
        }
        contract = try JSONDecoder().decode(StreamingContract.self, from: json)
        try reset()
    }

    /// Zero states: the start of a stream (also after an audio interruption).
    func reset() throws {
        states = [:]
        for (name, description) in model.modelDescription.inputDescriptionsByName where name != "audio" {
            guard let shape = description.multiArrayConstraint?.shape else { continue }
            let zeros = try MLMultiArray(shape: shape, dataType: .float32)
            memset(zeros.dataPointer, 0, zeros.count * MemoryLayout<Float>.size)
            states[name] = zeros
        }
        pending = []; recent = []; quietUntil = [:]; hop = 0
    }

    /// AVAudioEngine's input tap, converted to mono Float32 at the model's sample rate.
    func start() throws {
        let input = engine.inputNode
        let hardware = input.outputFormat(forBus: 0)
        guard let target = AVAudioFormat(commonFormat: .pcmFormatFloat32, sampleRate: Double(contract.sample_rate),
                                         channels: 1, interleaved: false),
              let converter = AVAudioConverter(from: hardware, to: target) else { return }
        input.installTap(onBus: 0, bufferSize: 1024, format: hardware) { [weak self] buffer, _ in
            let frames = AVAudioFrameCount(Double(buffer.frameLength) * target.sampleRate / hardware.sampleRate) + 1
            guard let self, let out = AVAudioPCMBuffer(pcmFormat: target, frameCapacity: frames) else { return }
            var consumed = false
            converter.convert(to: out, error: nil) { _, status in
                if consumed { status.pointee = .noDataNow; return nil }
                consumed = true; status.pointee = .haveData; return buffer
            }
            let samples = UnsafeBufferPointer(start: out.floatChannelData![0], count: Int(out.frameLength))
            self.feed(Array(samples))
        }
        try engine.start()
    }

    func stop() { engine.inputNode.removeTap(onBus: 0); engine.stop() }

    /// Any number of samples; every whole hop runs the model once.
    func feed(_ samples: [Float]) {
        pending.append(contentsOf: samples)
        while pending.count >= contract.hop_samples {
            let chunk = Array(pending.prefix(contract.hop_samples))
            pending.removeFirst(contract.hop_samples)
            if let probs = try? step(chunk) { detect(probs) }
            hop += 1
        }
    }

    private func step(_ chunk: [Float]) throws -> [Float] {
        let audio = try MLMultiArray(shape: [1, NSNumber(value: contract.hop_samples)], dataType: .float32)
        chunk.withUnsafeBufferPointer { source in
            audio.dataPointer.copyMemory(from: source.baseAddress!, byteCount: chunk.count * MemoryLayout<Float>.size)
        }
        var inputs: [String: Any] = ["audio": audio]
        for (name, value) in states { inputs[name] = value }
        let out = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: inputs))
        for name in states.keys {  // each state's output is the next hop's input
            if let next = out.featureValue(for: name + "_out")?.multiArrayValue { states[name] = next }
        }
        let probs = out.featureValue(for: "probs")!.multiArrayValue!
        return (0..<probs.count).map { probs[$0].floatValue }
    }

    /// The tool's detection rule (compress.export.common.streaming.detections), hop by hop.
    private func detect(_ probs: [Float]) {
        recent.append(probs)
        if recent.count > contract.smoothing_hops { recent.removeFirst() }
        for keyword in contract.keywords {
            guard let column = contract.labels.firstIndex(of: keyword) else { continue }
            let mean = recent.map { Double($0[column]) }.reduce(0, +) / Double(recent.count)
            if mean >= contract.threshold && hop > (quietUntil[keyword] ?? -1) {
                quietUntil[keyword] = hop + contract.refractory_hops
                onKeyword?(keyword, hop)
            }
        }
    }
}
