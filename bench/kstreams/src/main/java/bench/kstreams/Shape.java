package bench.kstreams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.time.OffsetDateTime;
import java.time.format.DateTimeParseException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;

/**
 * A payload shape of the bench (bench/shapes.py), as the harness passes it in JSON: {@code name},
 * {@code time} ({@code epoch}: seconds as a JSON number; {@code iso}: an ISO-8601 string with its
 * offset), {@code avro_schema} (a schemaless Avro record with a {@code long timestamp} in epoch
 * seconds; absent or null: JSON), {@code skip} (bytes before the Avro body: 5 for the Confluent
 * header) and {@code bad} (the topic holds records to skip: read each JSON value whole).
 *
 * <p>What a record means, as in bucket_app: its event time is the value's {@code timestamp},
 * truncated to the second, or the Kafka record's time when the value has none. A record is
 * skipped, with bucket_app's reason, when the value is empty ({@code empty}), no JSON ({@code
 * not_json}), JSON but no object ({@code not_object}), has a time of the wrong type or format
 * ({@code bad_time}), or is no Avro record of the schema ({@code not_avro}).
 */
record Shape(String name, boolean iso, Schema avro, int skip, boolean bad) {
  static Shape parse(String json) throws IOException {
    JsonNode spec = new ObjectMapper().readTree(json);
    JsonNode schema = spec.path("avro_schema");
    return new Shape(spec.path("name").asText("flat"), "iso".equals(spec.path("time").asText()),
        schema.isObject() ? new Schema.Parser().parse(schema.toString()) : null,
        spec.path("skip").asInt(0), spec.path("bad").asBoolean(false));
  }

  /** A decoder of this shape's values; not thread-safe (it reuses its buffers): one per
   * processor instance. */
  Decoder decoder() {
    return avro != null ? new AvroTime(avro, skip) : new JsonTime(iso, bad);
  }

  /** Reads a record value's event time. */
  interface Decoder {
    /** The event time in ms (whole seconds) of {@code value}; {@code recordTimeMs} when the
     * value has none. */
    long eventTimeMs(byte[] value, long recordTimeMs) throws Skip;
  }

  /** A record not counted, and why: a checked exception without a stack trace (1% of bad1's
   * records, so it must be cheap). */
  static final class Skip extends Exception {
    private static final long serialVersionUID = 1L;
    final String reason;

    Skip(String reason) {
      super(reason, null, false, false);
      this.reason = reason;
    }
  }

  /** JSON with jackson-core's streaming parser: the top-level {@code timestamp}, the rest
   * skipped. {@code whole}: read the value to its end, so that a truncated value is skipped as
   * not JSON even past its time (bad1); otherwise stop at the time. */
  static final class JsonTime implements Decoder {
    private static final JsonFactory FACTORY = new JsonFactory();
    private final boolean iso;
    private final boolean whole;

    JsonTime(boolean iso, boolean whole) {
      this.iso = iso;
      this.whole = whole;
    }

    @Override
    public long eventTimeMs(byte[] value, long recordTimeMs) throws Skip {
      if (value == null || value.length == 0) {
        throw new Skip("empty");
      }
      try (JsonParser parser = FACTORY.createParser(value)) {
        JsonToken first = parser.nextToken();
        if (first == null) {
          throw new Skip("not_json"); // only white space
        }
        if (first != JsonToken.START_OBJECT) {
          parser.skipChildren();
          if (parser.nextToken() != null) {
            throw new Skip("not_json");
          }
          throw new Skip("not_object");
        }
        long time = -1;
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
          JsonToken token = parser.nextToken();
          if (time < 0 && "timestamp".equals(parser.currentName())) {
            time = time(parser, token);
            if (!whole) {
              return time;
            }
          } else {
            parser.skipChildren();
          }
        }
        if (whole && parser.nextToken() != null) {
          throw new Skip("not_json"); // something after the object
        }
        return time >= 0 ? time : recordTimeMs;
      } catch (IOException e) { // JsonParseException, or the value ended inside the object
        throw new Skip("not_json");
      }
    }

    private long time(JsonParser parser, JsonToken token) throws IOException, Skip {
      if (token == JsonToken.VALUE_NUMBER_INT) {
        return parser.getLongValue() * 1000;
      }
      if (token == JsonToken.VALUE_NUMBER_FLOAT) {
        return (long) parser.getDoubleValue() * 1000; // truncated, as the harness's int()
      }
      if (token == JsonToken.VALUE_STRING && iso) {
        try {
          return OffsetDateTime.parse(parser.getText()).toEpochSecond() * 1000;
        } catch (DateTimeParseException e) {
          throw new Skip("bad_time");
        }
      }
      throw new Skip("bad_time");
    }
  }

  /** Schemaless Avro (org.apache.avro's binary decoder and generic reader, both reused) after
   * {@code skip} bytes of framing; the record's {@code timestamp} in epoch seconds. */
  static final class AvroTime implements Decoder {
    private final GenericDatumReader<GenericRecord> reader;
    private final int timestamp;
    private final int skip;
    private BinaryDecoder decoder;
    private GenericRecord record;

    AvroTime(Schema schema, int skip) {
      this.reader = new GenericDatumReader<>(schema);
      this.timestamp = schema.getField("timestamp").pos();
      this.skip = skip;
    }

    @Override
    public long eventTimeMs(byte[] value, long recordTimeMs) throws Skip {
      if (value == null || value.length == 0) {
        throw new Skip("empty");
      }
      if (value.length <= skip) {
        throw new Skip("not_avro");
      }
      try {
        decoder = DecoderFactory.get().binaryDecoder(value, skip, value.length - skip, decoder);
        record = reader.read(record, decoder);
      } catch (IOException | RuntimeException e) { // EOF, or bytes no record of the schema
        throw new Skip("not_avro");
      }
      return (Long) record.get(timestamp) * 1000;
    }
  }
}
