// Android: the microphone into compress's streaming LiteRT model (stream.tflite), one hop at a time.
//
// The contract (README "Streaming keyword spotting"): the file's signature `serving_default` takes `audio`
// Float32 [1, hop_samples] of mono PCM at sample_rate in [-1, 1] and every state (zeros at the start); it
// returns `probs` [1, classes] in `labels` order and `<state>_out`, fed back as `<state>` on the next hop.
// The contract's JSON is the file's `streaming` metadata and, the same, `stream.json` beside it: ship that
// file in assets/. The detection rule is the tool's: a keyword fires when the mean of its probs over the last
// smoothing_hops hops reaches threshold, then not again for refractory_hops hops.
// Dependency: com.google.ai.edge.litert:litert (the LiteRT Interpreter API). Needs RECORD_AUDIO permission.
// Not compiled in this repository's CI (no Android SDK there): a starting point to paste into an app.

import android.media.AudioFormat
import android.media.AudioRecord
import android.media.MediaRecorder
import org.json.JSONObject
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder

class StreamingContract(json: String) {
    private val o = JSONObject(json)
    val sampleRate = o.getInt("sample_rate")
    val hopSamples = o.getInt("hop_samples")
    val labels = List(o.getJSONArray("labels").length()) { o.getJSONArray("labels").getString(it) }
    val keywords = List(o.getJSONArray("keywords").length()) { o.getJSONArray("keywords").getString(it) }
    val threshold = o.getDouble("threshold")
    val smoothingHops = o.getInt("smoothing_hops")
    val refractoryHops = o.getInt("refractory_hops")
}

class WakeWordListener(model: ByteBuffer, private val contract: StreamingContract,
                       private val onKeyword: (keyword: String, hop: Int) -> Unit) {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(1))
    private val signature = interpreter.signatureKeys.first()  // "serving_default"
    private val stateNames = interpreter.getSignatureInputs(signature).filter { it != "audio" }
    private var states = HashMap<String, ByteBuffer>()
    private var outputs = HashMap<String, Any>()
    private val audio = floatBuffer(contract.hopSamples)
    private val probs = floatBuffer(contract.labels.size)
    private val recent = ArrayDeque<FloatArray>()
    private val quietUntil = HashMap<String, Int>()
    private var hop = 0

    init { reset() }

    private fun floatBuffer(count: Int): ByteBuffer =
        ByteBuffer.allocateDirect(4 * count).order(ByteOrder.nativeOrder())

    private fun elements(name: String): Int =
        interpreter.getInputTensorFromSignature(name, signature).shape().fold(1) { a, b -> a * b }

    /** Zero states: the start of a stream (also after the microphone was interrupted). */
    fun reset() {
        states = HashMap(stateNames.associateWith { floatBuffer(elements(it)) })  // allocateDirect is zeroed
        outputs = HashMap<String, Any>(stateNames.associate { "${it}_out" to floatBuffer(elements(it)) })
        outputs["probs"] = probs
        recent.clear(); quietUntil.clear(); hop = 0
    }

    /** One hop of PCM16 from AudioRecord. */
    private fun step(pcm: ShortArray) {
        audio.rewind()
        for (s in pcm) audio.putFloat(s / 32768f)
        audio.rewind()
        val inputs = HashMap<String, Any>(states).apply { put("audio", audio) }
        outputs.values.forEach { (it as ByteBuffer).rewind() }
        interpreter.runSignature(inputs, outputs, signature)
        for (name in stateNames) {  // swap: this hop's <state>_out is the next hop's <state>
            val next = outputs["${name}_out"] as ByteBuffer
            outputs["${name}_out"] = states.getValue(name)
            states[name] = next.also { it.rewind() }
        }
        probs.rewind()
        val row = FloatArray(contract.labels.size) { probs.float }
        detect(row)
        hop += 1
    }

    /** The tool's detection rule (compress.export.common.streaming.detections), hop by hop. */
    private fun detect(row: FloatArray) {
        recent.addLast(row)
        if (recent.size > contract.smoothingHops) recent.removeFirst()
        for (keyword in contract.keywords) {
            val column = contract.labels.indexOf(keyword)
            val mean = recent.sumOf { it[column].toDouble() } / recent.size
            if (mean >= contract.threshold && hop > (quietUntil[keyword] ?: -1)) {
                quietUntil[keyword] = hop + contract.refractoryHops
                onKeyword(keyword, hop)
            }
        }
    }

    /** Blocking loop on a background thread: AudioRecord at the model's rate, mono PCM16, one hop per read. */
    fun listen(isRunning: () -> Boolean) {
        val min = AudioRecord.getMinBufferSize(contract.sampleRate, AudioFormat.CHANNEL_IN_MONO,
                                               AudioFormat.ENCODING_PCM_16BIT)
        val record = AudioRecord(MediaRecorder.AudioSource.VOICE_RECOGNITION, contract.sampleRate,
                                 AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT,
                                 maxOf(min, 8 * contract.hopSamples * 2))
        val pcm = ShortArray(contract.hopSamples)
        record.startRecording()
        try {
            while (isRunning()) {
                var filled = 0
                while (filled < pcm.size) {
                    val n = record.read(pcm, filled, pcm.size - filled)
                    if (n < 0) return
                    filled += n
                }
                step(pcm)
            }
        } finally {
            record.stop(); record.release()
        }
    }
}
