package bench.kstreams;

import bench.kstreams.Shape.Decoder;
import bench.kstreams.Shape.Skip;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.AppInfoParser;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyWindowStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The Kafka Streams contender: a 60 s tumbling-window count per Kafka key, event time from the
 * message value's {@code timestamp} field, RocksDB window store with its changelog, one stream
 * thread.
 *
 * <p>The harness keys every message by its {@code server|topic}, the fields bucket_app groups by,
 * so the count groups by the Kafka key without a repartition and reads only the event time from
 * the value: as a Kafka Streams user would on a topic keyed this way. A value it cannot read is
 * skipped and counted by reason (bucket_app's reasons), never fatal; see {@link Shape}.
 *
 * <p>Job in {@code $BENCH_CONFIG} (as bench/child.py's): brokers, topic, ends, result, group,
 * state_dir. Arguments: {@code at_least_once} or {@code exactly_once_v2}, then optionally the
 * payload shape as JSON (bench/shapes.py's {@code kstreams_spec}; default: flat JSON with epoch
 * seconds). It first warms the JVM up
 * with passes over the topic, each with its own application.id and state, until {@code
 * $BENCH_KSTREAMS_WARMUP} messages (600,000 by default; 0: none) were processed, then counts the
 * whole topic with a new application.id, and writes the wall-clock times of the first record processed and of the
 * one that completed the last partition, the records processed, its peak RSS and the window
 * store's contents (an interactive query once every partition's end offset was processed) to the
 * result file. System properties {@code -Dks.NAME=VALUE} override Streams config NAME.
 */
public final class Main {
  static final String STORE = "counts";
  static final long WINDOW_MS = 60_000;
  static final Duration GRACE = Duration.ofDays(1);
  static final ObjectMapper JSON = new ObjectMapper();
  // StreamsConfig.BUFFERED_RECORDS_PER_PARTITION_CONFIG, deprecated in 3.9 but still in effect
  static final String BUFFERED_RECORDS = "buffered.records.per.partition";

  public static void main(String[] args) throws Exception {
    String guarantee = args.length > 0 ? args[0] : StreamsConfig.AT_LEAST_ONCE;
    Shape shape = Shape.parse(args.length > 1 ? args[1] : "{}");
    JsonNode cfg = JSON.readTree(System.getenv("BENCH_CONFIG"));
    Map<Integer, Long> ends = new HashMap<>();
    cfg.get("ends").fields().forEachRemaining(
        e -> ends.put(Integer.parseInt(e.getKey()), e.getValue().asLong()));
    long warmup = Long.parseLong(System.getenv().getOrDefault("BENCH_KSTREAMS_WARMUP", "600000"));
    String brokers = cfg.get("brokers").asText();
    String topic = cfg.get("topic").asText();
    String group = cfg.get("group").asText();
    Path stateDir = Path.of(cfg.get("state_dir").asText());

    ObjectNode warm = warmUp(brokers, topic, group, stateDir, guarantee, shape, ends, warmup);
    String tune = System.getenv("BENCH_KSTREAMS_TUNE");
    if (tune != null) { // "k=v,k=v|k=v": each config in turn, rounds times, after the warm-up
      tune(brokers, topic, group, stateDir, guarantee, shape, ends, tune.split("\\|", -1),
          Integer.parseInt(System.getenv().getOrDefault("BENCH_KSTREAMS_TUNE_ROUNDS", "3")));
      System.exit(0);
    }
    Pass pass = new Pass(brokers, topic, group, stateDir.resolve("main"), guarantee, shape,
        ends);
    ArrayNode counts = pass.run(true);
    System.out.println("shape " + shape.name() + ": processed " + pass.progress.messages
        + " records, skipped " + pass.skipped);

    ObjectNode result = JSON.createObjectNode();
    result.put("first", pass.progress.first / 1000.0);
    result.put("last", pass.progress.last / 1000.0);
    result.put("messages", pass.progress.messages);
    // CPU seconds of the whole JVM (stream thread, GC, JIT, clients) from first to last
    result.put("cpu_seconds", (pass.progress.cpuLast - pass.progress.cpuFirst) / 1e9);
    result.put("peak_rss_mb", peakRssMb());
    result.put("version", "kafka-streams " + AppInfoParser.getVersion() + " " + guarantee
        + (warm == null ? ", no warm-up" : ""));
    result.put("guarantee", guarantee);
    result.put("shape", shape.name());
    ObjectNode skipped = result.putObject("skipped"); // by reason, as bucket_app's /health
    pass.skipped.forEach(skipped::put);
    ObjectNode config = result.putObject("config");
    pass.props.forEach((k, v) -> config.put(k.toString(), v.toString()));
    if (warm != null) {
      result.set("warmup", warm);
    }
    result.set("counts", counts);
    Path out = Path.of(cfg.get("result").asText());
    Path tmp = Path.of(out + ".tmp");
    JSON.writeValue(tmp.toFile(), result);
    Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    System.exit(0);
  }

  /** JIT warm-up: passes over the topic (each with its own application.id and state), the last
   * one over its first messages, until {@code warmup} messages were processed. Returns the
   * passes, messages and the last full pass's msg/s (null: no warm-up). */
  static ObjectNode warmUp(String brokers, String topic, String group, Path stateDir,
      String guarantee, Shape shape, Map<Integer, Long> ends, long warmup) throws Exception {
    long total = ends.values().stream().mapToLong(Long::longValue).sum();
    if (warmup <= 0 || total == 0) {
      return null;
    }
    ObjectNode warm = JSON.createObjectNode();
    long done = 0;
    int passes = 0;
    while (done < warmup) {
      long want = Math.min(total, warmup - done);
      // the first messages of each partition, as many from each as its share of the topic
      Map<Integer, Long> warmEnds = new HashMap<>();
      for (Map.Entry<Integer, Long> e : ends.entrySet()) {
        long share = (long) Math.ceil((double) want * e.getValue() / total);
        warmEnds.put(e.getKey(), Math.min(e.getValue(), share));
      }
      Pass pass = new Pass(brokers, topic, group + "-warmup" + passes,
          stateDir.resolve("warmup" + passes), guarantee, shape, warmEnds);
      pass.run(false);
      Progress pr = pass.progress;
      done += pr.messages;
      passes++;
      if (passes == 1 || want == total) {
        warm.put("last_pass_messages", pr.messages);
        warm.put("seconds", (pr.last - pr.first) / 1000.0);
        warm.put("cpu_seconds", (pr.cpuLast - pr.cpuFirst) / 1e9);
      }
    }
    warm.put("passes", passes);
    warm.put("messages", done);
    return warm;
  }

  /** Prints each pass's msg/s and msg per JVM CPU second, configs interleaved. */
  static void tune(String brokers, String topic, String group, Path stateDir, String guarantee,
      Shape shape, Map<Integer, Long> ends, String[] configs, int rounds) throws Exception {
    for (int round = 0; round < rounds; round++) {
      for (int c = 0; c < configs.length; c++) {
        Pass pass = new Pass(brokers, topic, group + "-" + round + "-" + c,
            stateDir.resolve(round + "-" + c), guarantee, shape, ends);
        for (String kv : configs[c].split(",")) {
          if (!kv.isBlank()) {
            pass.props.put(kv.substring(0, kv.indexOf('=')), kv.substring(kv.indexOf('=') + 1));
          }
        }
        pass.run(false);
        Progress pr = pass.progress;
        System.out.printf("round %d config %d [%s] %.0f msg/s %.0f msg/cpu-s%n", round, c,
            configs[c], pr.messages * 1000.0 / (pr.last - pr.first),
            pr.messages * 1e9 / (pr.cpuLast - pr.cpuFirst));
      }
    }
  }

  /** Streams config: its defaults, one stream thread, and what measured fastest here. */
  static Properties streamsConfig(String brokers, String appId, Path stateDir,
      String guarantee) {
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    // a single broker: changelog and internal topics with one replica
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    // Measured on 300,000 messages (bench/README.md): polls of 10,000 records (Streams' default
    // is 1,000), up to 4 MiB a partition per fetch (bare.py's), and as many buffered per
    // partition before Streams pauses it (default 1,000). The record cache
    // (statestore.cache.max.bytes, 10 MiB) already holds every window of the topic (1,000 keys
    // x 11). commit.interval.ms: at_least_once keeps its default, 30 s; exactly_once_v2 commits
    // every second instead of every 100 ms (bucket_app commits every 2.8 s).
    if (StreamsConfig.EXACTLY_ONCE_V2.equals(guarantee)) {
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
    }
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), 10_000);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG),
        4 * 1024 * 1024);
    p.put(BUFFERED_RECORDS, 10_000);
    for (String name : System.getProperties().stringPropertyNames()) {
      if (name.startsWith("ks.")) {
        p.put(name.substring(3), System.getProperty(name));
      }
    }
    return p;
  }

  /** Processed records: the first one's time, and the time every partition's end was reached. */
  static final class Progress {
    final Map<Integer, Long> targets = new HashMap<>(); // partition -> last offset to process
    final CountDownLatch done = new CountDownLatch(1);
    volatile long first; // epoch ms
    volatile long last;
    volatile long cpuFirst; // the process's CPU time (all its threads), ns
    volatile long cpuLast;
    long messages;

    Progress(Map<Integer, Long> ends) {
      ends.forEach((p, end) -> {
        if (end > 0) {
          targets.put(p, end - 1);
        }
      });
      if (targets.isEmpty()) {
        first = last = System.currentTimeMillis();
        done.countDown();
      }
    }

    /** After the record was counted (its forward returned) or skipped: record its offset. */
    void counted(int partition, long offset) {
      messages++;
      if (first == 0) {
        first = System.currentTimeMillis();
        cpuFirst = cpuNanos();
      }
      Long target = targets.get(partition);
      if (target != null && offset >= target) {
        targets.remove(partition);
        if (targets.isEmpty()) {
          last = System.currentTimeMillis();
          cpuLast = cpuNanos();
          done.countDown();
        }
      }
    }

    static long cpuNanos() {
      return ((com.sun.management.OperatingSystemMXBean)
          java.lang.management.ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime();
    }
  }

  /** One run of the topology under its own application.id, until every end offset is counted. */
  static final class Pass {
    final String brokers;
    final String topic;
    final String appId;
    final Properties props;
    final Progress progress;
    final Shape shape;
    // records skipped, by reason; written by the one stream thread, read after progress.done
    final Map<String, Long> skipped = new TreeMap<>();

    Pass(String brokers, String topic, String appId, Path stateDir, String guarantee,
        Shape shape, Map<Integer, Long> ends) {
      this.brokers = brokers;
      this.topic = topic;
      this.appId = appId;
      this.shape = shape;
      this.props = streamsConfig(brokers, appId, stateDir, guarantee);
      this.progress = new Progress(ends);
    }

    Topology topology() {
      StreamsBuilder builder = new StreamsBuilder();
      Progress tracked = progress;
      Map<String, Long> skips = skipped;
      // the source's timestamp is the record's (the producer's); the processor replaces it
      // with the event time it reads from the value, which the windowed count uses
      builder.stream(topic, Consumed.with(Serdes.Bytes(), Serdes.ByteArray()))
          .processValues(() -> new FixedKeyProcessor<Bytes, byte[], byte[]>() {
            private final Decoder decoder = shape.decoder();
            private FixedKeyProcessorContext<Bytes, byte[]> context;

            @Override
            public void init(FixedKeyProcessorContext<Bytes, byte[]> context) {
              this.context = context;
            }

            @Override
            public void process(FixedKeyRecord<Bytes, byte[]> record) {
              try {
                long time = decoder.eventTimeMs(record.value(), record.timestamp());
                // counted (in the store's cache) when this returns
                context.forward(record.withTimestamp(time));
              } catch (Skip skip) {
                skips.merge(skip.reason, 1L, Long::sum);
              }
              RecordMetadata meta = context.recordMetadata().orElseThrow();
              tracked.counted(meta.partition(), meta.offset());
            }
          })
          .groupByKey(Grouped.with(Serdes.Bytes(), Serdes.ByteArray()))
          .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(WINDOW_MS), GRACE))
          .count(Materialized.<Bytes, Long, WindowStore<Bytes, byte[]>>as(STORE)
              .withKeySerde(Serdes.Bytes())
              .withValueSerde(Serdes.Long()));
      return builder.build();
    }

    /** Runs until done; returns the store's [server, topic, window start s, count] rows if
     * asked. */
    ArrayNode run(boolean query) throws Exception {
      AtomicReference<Throwable> failed = new AtomicReference<>();
      ArrayNode rows = JSON.createArrayNode();
      try (KafkaStreams streams = new KafkaStreams(topology(), props)) {
        streams.setUncaughtExceptionHandler(e -> {
          failed.set(e);
          progress.done.countDown();
          return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
              .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();
        progress.done.await();
        if (failed.get() != null) {
          throw new RuntimeException("stream thread failed", failed.get());
        }
        if (query) {
          ReadOnlyWindowStore<Bytes, Long> store = store(streams);
          try (KeyValueIterator<Windowed<Bytes>, Long> it = store.all()) {
            while (it.hasNext()) {
              KeyValue<Windowed<Bytes>, Long> kv = it.next();
              ArrayNode row = rows.addArray();
              String key = new String(kv.key.key().get(), StandardCharsets.UTF_8);
              int bar = key.indexOf('|'); // Kafka key server|topic
              row.add(key.substring(0, Math.max(bar, 0)));
              row.add(key.substring(bar + 1));
              row.add(kv.key.window().start() / 1000);
              row.add(kv.value);
            }
          }
        }
        streams.close(Duration.ofSeconds(30));
      }
      deleteInternalTopics();
      return rows;
    }

    static ReadOnlyWindowStore<Bytes, Long> store(KafkaStreams streams)
        throws InterruptedException {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (true) {
        try {
          return streams.store(StoreQueryParameters.fromNameAndType(
              STORE, QueryableStoreTypes.<Bytes, Long>windowStore()));
        } catch (InvalidStateStoreException e) {
          if (System.nanoTime() > deadline) {
            throw e;
          }
          Thread.sleep(50);
        }
      }
    }

    /** The changelog (and any other internal topic) of this application.id: gone after the run,
     * so that the broker compacts nothing of it while the next contender is measured. */
    void deleteInternalTopics() {
      Properties p = new Properties();
      p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
      try (Admin admin = Admin.create(p)) {
        Set<String> names = admin.listTopics().names().get(30, TimeUnit.SECONDS);
        List<String> ours = new ArrayList<>();
        for (String name : names) {
          if (name.startsWith(appId + "-")) {
            ours.add(name);
          }
        }
        admin.deleteTopics(ours).all().get(30, TimeUnit.SECONDS);
      } catch (Exception e) {
        System.err.println("could not delete the internal topics of " + appId + ": " + e);
      }
    }
  }

  static double peakRssMb() throws IOException {
    for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
      if (line.startsWith("VmHWM:")) {
        return Long.parseLong(line.split("\\s+")[1]) / 1024.0;
      }
    }
    return 0;
  }

  private Main() {}
}
